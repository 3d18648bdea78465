"""The prompt stage: captions -> wide-spectrum prompt pairs (p_o, p_a, dims)."""
