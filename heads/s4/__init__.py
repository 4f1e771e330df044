"""The S4 layer (Gu et al., ICLR 2022) as ViS4mer uses it. Read in this order:

  reference.py    the straight-line math: HiPPO-LegS NPLR, Cauchy sums at the rfft nodes, Woodbury, inverse rfft
  layer.py        `S4`: parameters (the paper code's layout), kernel cache, forward
  conv.py         FFT sizing, causal convolution, the fused channel-chunked core (GELU, dropout, pool-by-2)
  kernels.py      backend registry (`naive`, `torch`, `keops`), the `auto` policy, `ssm_kernel`
  keops_health.py can PyKeOps run on this device? the once-per-process probe behind `auto`
  smooth.py       the `torch` kernel for 11-smooth L
  mixed_radix.py  the `torch` kernel for L with a prime factor > 11 (LVU's 11,820 = 197 * 60)
  resonant.py     exact float64 terms for the poles next to the unit circle, where both kernels lose float32 precision
  numba_loops.py  compiled CPU twins of the mixed-radix kernel's elementwise chains
  cpu.py          process-wide CPU state: the chunk thread pool, scratch buffers, huge-page hint
"""

from heads.s4.layer import S4

__all__ = ["S4"]
