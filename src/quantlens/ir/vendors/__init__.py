"""Vendor toolchains' graph rewrites as data: which ONNX nodes each vendor fuses into one op
before it quantizes, and how it names the result. The emulation reads them to place
quantizers where the chip has them; the exporters read them to name what the vendor's
graph contains."""
