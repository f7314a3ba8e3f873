//! The `cggm serve` flags that choose and configure the executor (read by [`super::Executor`] and
//! the Slurm executor's configuration).

use std::path::PathBuf;

/// `cggm serve` flags that choose and configure the executor (each with its environment variable).
#[derive(Clone, Debug, clap::Args)]
pub struct ExecutorArgs {
    /// Where jobs run: `local` (child processes of this server) or `slurm` (batch jobs submitted
    /// with sbatch; needs --slurm-shared-dir on a folder the nodes see).
    #[arg(long, env = "CGGM_EXECUTOR", default_value = "local")]
    pub executor: ExecutorKind,
    /// Slurm partition for the jobs (sbatch --partition); the cluster's default when unset.
    #[arg(long, env = "CGGM_SLURM_PARTITION")]
    pub slurm_partition: Option<String>,
    /// Slurm account to charge (sbatch --account).
    #[arg(long, env = "CGGM_SLURM_ACCOUNT")]
    pub slurm_account: Option<String>,
    /// Time limit per job (sbatch --time, e.g. `1-00:00:00` or `90` minutes).
    #[arg(long, env = "CGGM_SLURM_TIME")]
    pub slurm_time: Option<String>,
    /// GPUs per job (sbatch --gres=gpu:N); 0 asks for none.
    #[arg(long, env = "CGGM_SLURM_GPUS", default_value_t = 0)]
    pub slurm_gpus: u32,
    /// CPUs per job (sbatch --cpus-per-task); the cluster's default when unset.
    #[arg(long, env = "CGGM_SLURM_CPUS")]
    pub slurm_cpus: Option<u32>,
    /// An extra sbatch option, e.g. `--qos=long` (repeat the flag for several; separate them with
    /// ';' in the environment variable).
    #[arg(
        long = "slurm-sbatch-arg",
        env = "CGGM_SLURM_SBATCH_ARGS",
        value_delimiter = ';',
        allow_hyphen_values = true
    )]
    pub slurm_sbatch_args: Vec<String>,
    /// A folder the server and every node see at the same path: batch scripts, events files and
    /// Slurm's output go there. Defaults to `<data dir>/slurm` (then the data directory itself
    /// must be on the shared file system, as the run folders must be in any case).
    #[arg(long, env = "CGGM_SLURM_SHARED_DIR")]
    pub slurm_shared_dir: Option<PathBuf>,
    /// The `cggm` binary as the nodes see it; defaults to this server's own executable.
    #[arg(long, env = "CGGM_SLURM_CGGM")]
    pub slurm_cggm: Option<PathBuf>,
    /// How often the server reads the events files and asks Slurm for the jobs' states (ms).
    #[arg(long, env = "CGGM_SLURM_POLL_MS", default_value_t = 2000)]
    pub slurm_poll_ms: u64,
    /// A running job whose events file has not grown for this long is shown as stalled (s).
    #[arg(long, env = "CGGM_SLURM_STALL_S", default_value_t = 600)]
    pub slurm_stall_s: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    Local,
    Slurm,
}
