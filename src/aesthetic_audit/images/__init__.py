"""Image pairs (I_o, I_a): the photo editor, importers of existing pairs, safe decoding."""
