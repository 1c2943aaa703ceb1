"""The row normalisers (LayerNorm, RMSNorm), forward and backward, fused with their neighbours."""
