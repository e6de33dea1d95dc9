"""Training with pytorch-ignite: the loss, the engines' steps, metrics, run-folder handlers and ownership."""
