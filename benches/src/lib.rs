//! `arca-benches` will hold the criterion benchmarks (one file per pipeline stage, plus end
//! to end) and the side-by-side comparison with restic and rustic, whose dependencies stay
//! out of the product.
