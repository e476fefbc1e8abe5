/* Picks OpenBLAS kernels that match the CPU when OpenBLAS itself could not. */
#ifndef KVTC_TOOLS_BLAS_KERNELS_H
#define KVTC_TOOLS_BLAS_KERNELS_H

/* Called first thing in main. If OpenBLAS fell back to its Prescott (SSE3)
 * kernels on a CPU with AVX2 or AVX-512, and the user did not choose a kernel set
 * with OPENBLAS_CORETYPE, re-executes the tool with OPENBLAS_CORETYPE naming the
 * kernels the CPU supports. Returns (doing nothing) in every other case, and if
 * the re-execution fails. */
void cli_choose_blas_kernels(char **argv);

#endif
