/*
 * fuzz_safetensors.c — the .safetensors reader (model/safetensors.c): header length, the
 * JSON header (cJSON), dtypes, shapes and data_offsets, overlap of tensors; then the
 * configuration and the model (fuzz_check_tensor_set). The input is the file.
 */
#include "fuzz_common.h"
#include "fuzz_tensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_memfile(data, size);
	gf_tensor_set ts;
	char err[GF_ERR_LEN] = "";
	int rc = gf_tensors_read_safetensors(&ts, path, err);

	if (rc) {
		fuzz_check_err(err, sizeof(err), "gf_tensors_read_safetensors");
		FUZZ_CHECK(ts.n_tensors == 0 && !ts.map && !ts.tensors, "state left after an error");
		return 0;
	}
	fuzz_check_tensor_set(&ts, "safetensors");
	/* Tensors must not share bytes (the reader refuses overlapping data_offsets). */
	for (int i = 0; i < ts.n_tensors; i++)
		for (int j = i + 1; j < ts.n_tensors && ts.n_tensors < 512; j++) {
			const uint8_t *a = ts.tensors[i].data, *b = ts.tensors[j].data;
			size_t na = ts.tensors[i].nbytes, nb = ts.tensors[j].nbytes;

			FUZZ_CHECK(!na || !nb || a + na <= b || b + nb <= a, "%s and %s overlap",
				   ts.tensors[i].name, ts.tensors[j].name);
		}
	gf_tensors_free(&ts);
	return 0;
}
