"""The model repository: on-disk layout, manifests, validation, swap/probation/rollback."""
