//! Secrets kept in files: written readable by their owner only (0600) and atomically,
//! and read only from files no one else can read, so a token is never on a command line
//! (`/proc/PID/cmdline` is world-readable) nor in a file others can open.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read secret file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secret file {} has mode {mode:04o}: others can read it; make it readable by its owner only (chmod 600)",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("secret file {} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("cannot write secret file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The secret in `path`, without surrounding whitespace. Refused when the file can be read
/// by its group or by others, or holds nothing.
pub fn read(path: &Path) -> Result<String, SecretFileError> {
    let read_error = |source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(read_error)?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// Writes `contents` to `path` with mode 0600, atomically: to `PATH.tmp` (made 0600
/// before anything is written to it), synced, then renamed over `path`.
pub fn write(path: &Path, contents: &[u8]) -> Result<(), SecretFileError> {
    let write_error = |source| SecretFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    std::fs::rename(&temp, path).map_err(write_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "quilt-secret-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_owner_only_and_read_back_trimmed() {
        let dir = temp_dir();
        let path = dir.join("token");
        write(&path, b"s3cret\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(read(&path).unwrap(), "s3cret");
        // Rewritten: still 0600, new contents.
        write(&path, b"other").unwrap();
        assert_eq!(read(&path).unwrap(), "other");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_others_can_read_or_an_empty_one_is_refused() {
        let dir = temp_dir().join("refused");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, " \n").unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("is empty"));
        assert!(matches!(
            read(&dir.join("missing")),
            Err(SecretFileError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
