# Sourced by bench/decode and bench/train_throughput: OPENBLAS_CORETYPE is unset for every peer
# (each runs the kernels it picks: eellm fits OpenBLAS's to the CPU, eellm_blas_fit_cpu), or
# BENCH_BLAS_CORE=NAME sets it to NAME for every peer; blas_cores BUILD_DIR prints the
# OpenBLAS kernels eellm and PyTorch run.
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
if [ -n "${BENCH_BLAS_CORE:-}" ]; then export OPENBLAS_CORETYPE=$BENCH_BLAS_CORE; fi
blas_cores() {
  local eellm torch
  eellm=$(STARPU_NCPU=1 "$1/eellm" info | sed -n 's/^BLAS:.*(core \(.*\))$/\1/p')
  torch=$(/usr/bin/python3 -c 'import ctypes, torch
blas = ctypes.CDLL("libblas.so.3")
blas.openblas_get_corename.restype = ctypes.c_char_p
print(blas.openblas_get_corename().decode())')
  echo "OpenBLAS kernels: eellm $eellm, PyTorch $torch${OPENBLAS_CORETYPE:+ (OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE for every peer)}"
}
