/* eellm info: the StarPU, BLAS and GPUs that eellm runs on here. */
#include <cblas.h>
#include <starpu.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include <eellm.h>

static const char info_usage[] =
    "usage: eellm info\n"
    "\n"
    "Starts the runtime as 'eellm train' does and prints what it runs on: the StarPU\n"
    "version and configuration (CUDA and MPI support, the most CPUs and buffers per\n"
    "task it was built for), its workers by kind and the scheduler eellm chose (dmdas\n"
    "with CUDA workers, lws without; STARPU_SCHED overrides), the BLAS library, the\n"
    "build of eellm's own CPU kernels that runs on this CPU (x86-64-v4 with AVX-512,\n"
    "v3 with AVX2, the baseline), and the GPUs found with their memory ('none'\n"
    "without CUDA or without a device).\n"
    "STARPU_NCPU, STARPU_NCUDA and the other StarPU variables apply.\n"
    "\n"
    "Exit status: 0 printed, 1 the runtime did not start, 2 bad usage.\n";

static const char *yes_no(int flag) { return flag ? "yes" : "no"; }

static void print_starpu(void) {
  int major, minor, release;
  starpu_get_version(&major, &minor, &release);
#ifdef STARPU_USE_CUDA
  const int has_cuda = 1;
#else
  const int has_cuda = 0;
#endif
#ifdef STARPU_USE_MPI
  const int has_mpi = 1;
#else
  const int has_mpi = 0;
#endif
  printf("StarPU:     %d.%d.%d (CUDA %s, MPI %s, max CPUs %d, max buffers per task %d)\n", major,
         minor, release, yes_no(has_cuda), yes_no(has_mpi), STARPU_MAXCPUS, STARPU_NMAXBUFS);
  printf("workers:    %u CPU, %u CUDA\n", starpu_cpu_worker_get_count(),
         starpu_cuda_worker_get_count());
  const unsigned global_ctx = 0; /* the context eellm submits every task to */
  printf("scheduler:  %s\n", starpu_sched_ctx_get_sched_policy(global_ctx)->policy_name);
}

static void print_gpus(void) {
#ifdef STARPU_USE_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  if (count == 0) printf("GPUs:       none\n");
  for (int dev = 0; dev < count; dev++) {
    struct cudaDeviceProp props;
    if (cudaGetDeviceProperties(&props, dev) != cudaSuccess) continue;
    printf("GPU %d:      %s, %zu MiB, compute capability %d.%d\n", dev, props.name,
           props.totalGlobalMem >> 20, props.major, props.minor);
  }
#else
  printf("GPUs:       none (this StarPU has no CUDA)\n");
#endif
}

int cmd_info(int argc, char **argv) {
  if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    fputs(info_usage, stdout);
    return 0;
  }
  if (argc > 1) {
    fprintf(stderr, "eellm info: unexpected argument '%s' (see 'eellm info --help')\n", argv[1]);
    return 2;
  }
  char err[256];
  if (eellm_runtime_start(err, sizeof err) != 0) {
    fprintf(stderr, "eellm info: %s\n", err);
    return 1;
  }
  print_starpu();
  printf("BLAS:       %s (core %s)\n", openblas_get_config(), openblas_get_corename());
  printf("kernels:    %s\n", eellm_cpu_kernels());
  print_gpus();
  eellm_runtime_stop();
  return 0;
}
