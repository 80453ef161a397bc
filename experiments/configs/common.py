"""Builds a config from the library's defaults: the engine's `train`, the data layer's
`data`, and the method's `model` and `optim` sections."""

from protojax.config import ConfigDict
from protojax.data import default_config as data_config
from protojax.methods import method_module
from protojax.train import default_config as train_config


def base_config(method: str) -> ConfigDict:
    module = method_module(method)
    return ConfigDict(
        {
            "method": method,
            "seed": 0,
            "data": data_config(),
            "model": module.default_model_config(),
            "optim": module.default_optim_config(),
            "train": train_config(),
        }
    )
