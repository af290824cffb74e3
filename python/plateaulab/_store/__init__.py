"""The parts of the feature store; ``plateaulab.store`` is their public face."""
