//! nomadfs: the daemon and its CLI. Everything happens in `cli`.

mod cli;
mod config;
mod daemon;
mod faults;
mod mountinfo;
mod mountpoint;
mod notify;
mod sys;

fn main() {
    std::process::exit(cli::run());
}
