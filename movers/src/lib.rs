//! `arca-movers` will own data movement of volumes (a mounted directory tree, a block device
//! or image) into and out of a namespace's repository, with progress, cancellation and
//! resume. It knows nothing of Kubernetes types.
