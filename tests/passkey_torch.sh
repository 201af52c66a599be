#!/bin/sh
# Runs a check of tools/train/ (the PyTorch GoldFinch) with a Python that has PyTorch and
# NumPy (Debian: python3-torch); exits 77 (skip) where none has them.
#   passkey_torch.sh SCRIPT [ARGS...]
for py in python3 /usr/bin/python3; do
	if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import torch, numpy' 2>/dev/null; then
		exec "$py" "$@"
	fi
done
echo "no python3 with torch and numpy (apt-get install python3-torch): skipped"
exit 77
