"""What the kernel families' lowerings share, and the matrix products no template renders.

A family's lowering stands in its directory (graphgpt/families/<family>/lowering.py): its
`lower(launch, target)` turns one launch of the plan into a Kernel (the template's parameters, its
launch geometry and dynamic shared memory) for the device the plan is compiled for
(graphgpt/target.py), and codegen.py renders and names whatever it returns. common.py holds the Kernel record and the layout
arithmetic; gemm.py lowers matrix products to cuBLAS and cuBLASLt calls.
"""
