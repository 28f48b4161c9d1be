"""Run configuration: the schema (`schema.py`) and the YAML/override engine (`engine.py`)."""
from .engine import apply_overrides, config_to_yaml, load_config, save_config, valid_keys, validate_config
from .schema import (DataConfig, EarlyStoppingConfig, ModelConfig, RunConfig, StrategyConfig, TrainConfig,
                     loss_settings, run_config, strategy_config, train_settings)

__all__ = ["DataConfig", "EarlyStoppingConfig", "ModelConfig", "RunConfig", "StrategyConfig", "TrainConfig",
           "apply_overrides", "config_to_yaml", "load_config", "loss_settings", "run_config", "save_config",
           "strategy_config", "train_settings",
           "valid_keys", "validate_config"]
