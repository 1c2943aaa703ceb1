"""The causal softmax of explicit attention scores and its backward."""
