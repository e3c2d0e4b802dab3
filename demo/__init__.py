"""The Gradient Health demo: trains the notebook's MNIST models into a TensorBoard logdir (`python -m demo`)."""
