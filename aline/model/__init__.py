"""The network (encoder + posterior, forecast and policy heads) and the closed loop's model-side pieces."""
