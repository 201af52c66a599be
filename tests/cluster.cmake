# cluster/ (SLURM): cluster_server_file checks goldfinchd --server-file and gf --server-file
# on any machine; cluster_slurm brings up a real one-node SLURM cluster from Debian's
# packages (root; skipped only where SLURM cannot be installed), runs goldfinchd as a batch
# job through `srun --mpi=pmix`, and always tears the cluster down.
#
# The job's MPI ranks: the issue's 2 (-DGF_SLURM_TEST_RANKS=1 runs the one-process daemon
# under srun instead).
if(NOT DEFINED GF_SLURM_TEST_RANKS)
  set(GF_SLURM_TEST_RANKS 2)
endif()

if(TARGET goldfinchd AND TARGET gf AND TARGET gf-convert)
  add_test(NAME cluster_server_file
	   COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/cluster_server_file.sh $<TARGET_FILE:goldfinchd>
		   $<TARGET_FILE:gf> $<TARGET_FILE:gf-convert>
		   ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt)
  set_tests_properties(cluster_server_file PROPERTIES TIMEOUT 120 LABELS cluster)

  add_test(NAME cluster_slurm
	   COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/cluster_slurm.sh $<TARGET_FILE:goldfinchd>
		   $<TARGET_FILE:gf> $<TARGET_FILE:gf-convert>
		   ${GF_TESTDATA}/tokenizer/rwkv_vocab_v20230424.txt ${CMAKE_SOURCE_DIR}/cluster
		   ${GF_SLURM_TEST_RANKS})
  # Generous: installing the packages, and KillWait twice over if a job hangs; a run takes
  # about 20 s (35 s under the sanitizers) once the packages are installed.
  set_tests_properties(cluster_slurm PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 900 PROCESSORS 2
		       LABELS cluster)
endif()
