"""What a failed checkpoint read leaves behind is dropped; the same from other code shows."""

import asyncio
import gc
import logging

import pytest

from experiments import cli


def _failing_read_in(directory: str):
    namespace = {}
    source = "async def read():\n    raise ValueError('DATA_LOSS: byte range is not valid')\n"
    exec(compile(source, f"{directory}/serialization.py", "exec"), namespace)
    return namespace["read"]


@pytest.mark.parametrize(
    "directory, dropped",
    [("/venv/site-packages/orbax/checkpoint/_src", True), ("/venv/site-packages/mylib", False)],
)
def test_unretrieved_read_errors_are_dropped_only_from_orbax(caplog, directory, dropped):
    cli.drop_failed_read_leftovers()
    loop = asyncio.new_event_loop()
    task = loop.create_task(_failing_read_in(directory)())
    loop.run_until_complete(asyncio.sleep(0))  # the task fails; nobody retrieves its error
    loop.close()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del task
        gc.collect()
    logged = [r for r in caplog.records if "exception was never retrieved" in r.getMessage()]
    assert len(logged) == (0 if dropped else 1)
