/*
 * fuzz_pth.c — the PyTorch checkpoint reader (model/pth.c): zip central directory, ZIP64
 * records, local headers, the pickle machine and the tensors it rebuilds; then the
 * configuration inferred from the tensors and the model bound from them
 * (fuzz_check_tensor_set). The input is the .pth file; gf_tensors_read_any must agree
 * with the direct reader on zip inputs.
 */
#include "fuzz_common.h"
#include "fuzz_tensors.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *path = fuzz_memfile(data, size);
	gf_tensor_set ts, any;
	char err[GF_ERR_LEN] = "", err2[GF_ERR_LEN] = "";
	int rc = gf_tensors_read_pth(&ts, path, err), rc2;

	if (rc) {
		fuzz_check_err(err, sizeof(err), "gf_tensors_read_pth");
		FUZZ_CHECK(ts.n_tensors == 0 && !ts.map && !ts.tensors, "state left after an error");
	} else {
		fuzz_check_tensor_set(&ts, "pth");
	}
	if (size >= 4 && data[0] == 'P' && data[1] == 'K') {
		rc2 = gf_tensors_read_any(&any, path, err2);
		FUZZ_CHECK(rc2 == rc, "read_any %d, read_pth %d", rc2, rc);
		FUZZ_CHECK(rc || any.n_tensors == ts.n_tensors, "read_any and read_pth differ");
		gf_tensors_free(&any);
	}
	gf_tensors_free(&ts);
	return 0;
}
