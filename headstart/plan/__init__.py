"""Above the training loop: planning what to train. `auto` chooses a strategy and settings with its
reasons, `rank` orders backbones by transferability, and `transferability` holds the scores (LogME, LEEP,
NCE, H-score) as pure functions. Whatever trains is passed in as `fit`."""
