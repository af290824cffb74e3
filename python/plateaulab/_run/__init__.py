"""The parts of a probe run; ``plateaulab.run`` is their public face and the run loop."""
