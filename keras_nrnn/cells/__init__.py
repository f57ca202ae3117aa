"""Keras RNN cells whose update is a step of an SDE."""
