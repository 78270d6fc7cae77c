# Quantization: MLX affine 8/4-bit formats, the quantize command's writer.
set(DR_QUANT_SOURCES
)
