"""The classifier's loss and its gradient, fused over chunks of the logits."""
