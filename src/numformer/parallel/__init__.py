"""Running numformer on more than one core: threads over a batch (threads), MPI ranks over
processes and hosts (mpi), and the process settings both need (process: malloc, BLAS threads)."""
