//! Generate benchmark trees for `scripts/compare.sh`.
//!
//!   arca-bench-data generate DIR large|small|mixed [BYTES] [FILES] [SEED]
//!   arca-bench-data mutate DIR [EVERY] [INSERT_BYTES] [SEED]
//!   arca-bench-data image FILE BYTES [SEED]
//!   arca-bench-data scribble FILE [PERCENT] [SEED]
//!   arca-bench-data copy SRC DST [THREADS]

use std::path::Path;
use std::process::ExitCode;

fn num(a: Option<&String>, default: u64) -> Result<u64, String> {
    a.map_or(Ok(default), |s| {
        s.parse().map_err(|_| format!("{s:?} is not a number"))
    })
}

fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("generate") if args.len() >= 3 => {
            let shape = arca_benches::Shape::parse(&args[2])
                .ok_or_else(|| format!("shape {:?}: use large, small or mixed", args[2]))?;
            let bytes = num(args.get(3), 1 << 30)?;
            let files = num(args.get(4), 200_000)?;
            let seed = num(args.get(5), 1)?;
            let (f, b) = arca_benches::generate(Path::new(&args[1]), shape, bytes, files, seed)
                .map_err(|e| format!("generate into {}: {e}", args[1]))?;
            println!("{f} files, {b} bytes");
            Ok(())
        }
        Some("mutate") if args.len() >= 2 => {
            let every = num(args.get(2), 100)? as usize;
            let insert = num(args.get(3), 100)? as usize;
            let seed = num(args.get(4), 2)?;
            let n = arca_benches::mutate(Path::new(&args[1]), every, insert, seed)
                .map_err(|e| format!("mutate {}: {e}", args[1]))?;
            println!("{n} files changed, 1 added");
            Ok(())
        }
        Some("image") if args.len() >= 3 => {
            let bytes = num(args.get(2), 4 << 30)?;
            let seed = num(args.get(3), 1)?;
            let data = arca_benches::disk_image(Path::new(&args[1]), bytes, seed)
                .map_err(|e| format!("image {}: {e}", args[1]))?;
            println!("{bytes} bytes, {data} not zero");
            Ok(())
        }
        Some("scribble") if args.len() >= 2 => {
            let percent = num(args.get(2), 1)?;
            let seed = num(args.get(3), 2)?;
            let n = arca_benches::scribble(Path::new(&args[1]), percent, seed)
                .map_err(|e| format!("scribble {}: {e}", args[1]))?;
            println!("{n} bytes written in place");
            Ok(())
        }
        Some("copy") if args.len() >= 3 => {
            let threads = num(args.get(3), 4)? as usize;
            let (f, b) = arca_benches::copy_tree(Path::new(&args[1]), Path::new(&args[2]), threads)
                .map_err(|e| format!("copy {} to {}: {e}", args[1], args[2]))?;
            println!("{f} files, {b} bytes");
            Ok(())
        }
        _ => Err("usage: arca-bench-data generate DIR large|small|mixed [BYTES] [FILES] [SEED]\n       arca-bench-data mutate DIR [EVERY] [INSERT_BYTES] [SEED]\n       arca-bench-data image FILE BYTES [SEED]\n       arca-bench-data scribble FILE [PERCENT] [SEED]\n       arca-bench-data copy SRC DST [THREADS]".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
