//! Starting a worker process without copying the gateway.
//!
//! `fork` copies the parent's page tables, and a gateway with a wasm pool
//! maps a lot: forking it cost about 4 ms, most of a cold native open. The
//! child here is created the way glibc's `posix_spawn` does it, with
//! `clone(CLONE_VM | CLONE_VFORK)` on a small stack of its own: it shares
//! the gateway's memory until `execve`, and the calling thread sleeps until
//! then. `posix_spawn` itself cannot be used because the child must set
//! its parent-death signal before `execve` (see `prepare`), which no spawn
//! attribute does.
//!
//! Everything the child needs (paths, argv, envp) is prepared before the
//! clone; the child makes only raw system calls, allocates nothing and
//! takes no locks, and reports a failure through a shared integer before
//! `_exit`. All signals are blocked around the clone so no gateway signal
//! handler ever runs on the child's stack; the child resets handled
//! signals to their defaults before unblocking.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::memory_limit::Rlimits;

/// The child's stack: it only runs a few system calls.
const CHILD_STACK: usize = 64 * 1024;

/// What the child does between clone and exec.
pub(super) struct Launch {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// The gateway's pid: a child whose parent is no longer this pid after
    /// `prctl` does not start.
    pub parent: libc::pid_t,
    /// Becomes the child's stdin.
    pub stdin: RawFd,
    /// Becomes the child's stdout and stderr.
    pub output: RawFd,
    /// Inherited as is (its close-on-exec flag is cleared in the child).
    pub keep: RawFd,
    /// Memory limits set in the child before `exec`.
    pub rlimits: Option<Rlimits>,
    /// `cgroup.procs` descriptors the child writes `0` to, first of all,
    /// so that it and everything it starts are in the worker's cgroups.
    pub join: Vec<RawFd>,
}

impl Launch {
    /// Prepares `program args...` with exactly `env` as its environment.
    /// A program without a `/` is looked up in `env`'s `PATH`.
    pub fn new(
        program: &str,
        args: &[String],
        env: &[(OsString, OsString)],
        fds: (RawFd, RawFd, RawFd),
    ) -> io::Result<Self> {
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_os_str());
        let resolved = resolve(program, path)?;
        let argv = std::iter::once(program)
            .chain(args.iter().map(String::as_str))
            .map(|a| cstring(a.as_bytes().to_vec()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.clone().into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let (stdin, output, keep) = fds;
        Ok(Self {
            program: cstring(resolved.into_os_string().into_vec())?,
            argv,
            envp,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            stdin,
            output,
            keep,
            rlimits: None,
            join: Vec::new(),
        })
    }

    /// Starts the child and returns its pid once it has called `execve`
    /// (or failed before it, which is returned as the error).
    pub fn spawn(&self) -> io::Result<libc::pid_t> {
        let argv = null_terminated(&self.argv);
        let envp = null_terminated(&self.envp);
        let mut child = Child {
            launch: self,
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            error: 0,
        };
        let mut stack = vec![0u8; CHILD_STACK];
        // The stack grows down: pass its 16-byte-aligned top.
        let top = stack.as_mut_ptr().wrapping_add(CHILD_STACK);
        let top = top.wrapping_sub(top as usize % 16);

        // SAFETY: the sets are plain data, initialised by sigfillset before
        // use; pthread_sigmask only affects this thread.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        // SAFETY: CLONE_VFORK suspends this thread until the child has
        // called execve or _exit, so `child`, `stack`, argv and envp outlive
        // every use of them in the child; the child runs `child_main` only,
        // which makes async-signal-safe system calls and allocates nothing.
        let pid = unsafe {
            libc::clone(
                child_main,
                top.cast(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&raw mut child).cast(),
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores this thread's mask saved above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        drop(stack);
        if pid < 0 {
            return Err(clone_error);
        }
        // The child has exec'd or exited by now; `error` is what it saw.
        let error = unsafe { std::ptr::read_volatile(&raw const child.error) };
        if error != 0 {
            let mut status = 0;
            // SAFETY: reaps our own child, which has exited.
            unsafe {
                libc::waitpid(pid, &mut status, 0);
            }
            return Err(io::Error::from_raw_os_error(error));
        }
        Ok(pid)
    }
}

/// Shared with the child (same memory until exec).
struct Child<'a> {
    launch: &'a Launch,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// errno of the step that failed, set by the child before `_exit`.
    error: libc::c_int,
}

extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Child` the parent passed to clone, alive and
    // not touched by the parent until this child execs or exits.
    let child = unsafe { &mut *arg.cast::<Child>() };
    let error = unsafe { prepare(child.launch) };
    let error = match error {
        Ok(()) => {
            // SAFETY: program, argv and envp are NUL-terminated C strings
            // and NULL-terminated arrays prepared by the parent.
            unsafe {
                libc::execve(child.launch.program.as_ptr(), child.argv, child.envp);
            }
            errno()
        }
        Err(e) => e,
    };
    // SAFETY: a volatile write the parent reads after we exit.
    unsafe {
        std::ptr::write_volatile(&raw mut child.error, error.max(1));
        libc::_exit(127)
    }
}

/// The child's steps before exec. Returns the errno of a failed step.
unsafe fn prepare(l: &Launch) -> Result<(), libc::c_int> {
    let check = |r: libc::c_int| if r < 0 { Err(errno()) } else { Ok(()) };
    // SAFETY (whole body): raw system calls on descriptors the parent keeps
    // open across the clone; none allocates or locks.
    unsafe {
        for &fd in &l.join {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(errno());
            }
        }
        // No gateway handler may run here: the defaults, then unblock.
        for sig in 1..=libc::SIGRTMAX() {
            let mut sa: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut sa) == 0
                && sa.sa_sigaction != libc::SIG_DFL
                && (sa.sa_sigaction != libc::SIG_IGN || sig == libc::SIGPIPE)
            {
                // SIGPIPE too: Rust ignores it, a worker should not inherit that.
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        check(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        ))?;
        // The gateway may have died before prctl took effect; then the
        // signal will never come, so do not start at all.
        if libc::getppid() != l.parent {
            return Err(libc::ESRCH);
        }
        check(libc::setpgid(0, 0))?;
        check(libc::dup2(l.stdin, 0))?;
        check(libc::dup2(l.output, 1))?;
        check(libc::dup2(l.output, 2))?;
        let flags = libc::fcntl(l.keep, libc::F_GETFD);
        check(flags)?;
        check(libc::fcntl(
            l.keep,
            libc::F_SETFD,
            flags & !libc::FD_CLOEXEC,
        ))?;
        if let Some(limits) = &l.rlimits {
            limits.apply_here()?;
        }
    }
    Ok(())
}

fn errno() -> libc::c_int {
    // SAFETY: the calling thread's errno location is always valid.
    unsafe { *libc::__errno_location() }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn cstring(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a NUL byte in the command or environment",
        )
    })
}

/// `program` as execve needs it: as given if it has a `/`, otherwise the
/// first executable file of that name in `path`.
fn resolve(program: &str, path: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let not_found = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{program}: not found in PATH"),
        )
    };
    let path = path.ok_or_else(not_found)?;
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .ok_or_else(not_found)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn env() -> Vec<(OsString, OsString)> {
        vec![("PATH".into(), std::env::var_os("PATH").unwrap_or_default())]
    }

    fn wait(pid: libc::pid_t) -> libc::c_int {
        let mut status = 0;
        // SAFETY: our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    #[test]
    fn runs_the_program_with_its_output_and_the_kept_descriptor() {
        let (mut out_r, out_w) = io::pipe().unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let (keep, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = keep.as_raw_fd();
        let script = format!(
            "echo out; echo err >&2; test -e /proc/self/fd/{fd} && echo kept; read -r a b c d e rest < /proc/$$/stat; echo pgid $e"
        );
        let l = Launch::new(
            "sh",
            &["-c".into(), script],
            &env(),
            (devnull.as_raw_fd(), out_w.as_raw_fd(), fd),
        )
        .unwrap();
        let pid = l.spawn().unwrap();
        drop(out_w);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut out_r, &mut text).unwrap();
        assert_eq!(wait(pid), 0);
        assert!(text.contains("out\nerr\nkept\n"), "{text}");
        // Its own process group.
        assert!(text.trim_end().ends_with(&format!("pgid {pid}")), "{text}");
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_child() {
        let devnull = std::fs::File::open("/dev/null").unwrap();
        let fd = devnull.as_raw_fd();
        let missing = Launch::new("/nonexistent/worker", &[], &env(), (fd, fd, fd))
            .unwrap()
            .spawn()
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(Launch::new("no-such-worker-program", &[], &env(), (fd, fd, fd)).is_err());
    }
}
