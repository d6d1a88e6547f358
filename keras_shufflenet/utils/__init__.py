"""Helpers every stage shares: atomic file writes, argument checks,
command-line error handling, figures, timing statistics and whether
TensorFlow runs oneDNN. Imports nothing else of this package; the other
stages import its modules, and a user calls none of it.
"""
