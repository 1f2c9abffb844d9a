"""GGUF: the header reader, transformers' name and tensor mapping, the FP32 conversion of
the reference, and the Q8_0 blocks of an INT8 side. Shared by the reference loader and the
INT8 routes, so no scheme or route parses a GGUF file itself."""
