"""Pair labels: which image of a pair better matches p_a, from VLM labellers and humans."""
