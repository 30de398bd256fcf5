package sqlite

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/ripplehq/ripple/transport"
)

// SQLite primary result codes the driver tells apart.
const (
	codeCorrupt = 11
	codeIOErr   = 10
	codeFull    = 13
	codeNotADB  = 26
)

func sqliteCode(err error) int {
	var ce interface{ Code() int }
	if errors.As(err, &ce) {
		return ce.Code() & 0xff
	}
	return 0
}

// isCorrupt reports whether err says the database file is damaged.
func isCorrupt(err error) bool {
	if err == nil {
		return false
	}
	switch sqliteCode(err) {
	case codeCorrupt, codeNotADB:
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "malformed") || strings.Contains(msg, "(11)")
}

// diskFull reports whether the file system holding path has (next to) no
// space left. SQLite reports a full disk as SQLITE_FULL when a write
// fails, but as an I/O error (for example SQLITE_IOERR_IN_PAGE, "disk I/O
// error (8714)") when mapping its shared-memory file fails, which is what
// opening a database on a full disk does.
func diskFull(path string) bool {
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(path), &st); err != nil {
		return false
	}
	return uint64(st.Bavail)*uint64(st.Bsize) < 64<<10
}

// storageErr wraps err in transport.ErrStorageFull or transport.ErrCorrupt
// (with what to do) when that is what it is, and returns it unchanged
// otherwise.
func storageErr(path string, err error) error {
	if err == nil || errors.Is(err, transport.ErrStorageFull) || errors.Is(err, transport.ErrCorrupt) {
		return err
	}
	code := sqliteCode(err)
	switch {
	case code == codeFull || (code == codeIOErr || strings.Contains(err.Error(), "no space left")) && diskFull(path):
		return &storeError{kind: transport.ErrStorageFull, err: err,
			msg: fmt.Sprintf("sqlite transport: %s: disk full (%s); free space on the disk that holds the file and try again: nothing of the failed call was stored", path, sqliteText(err))}
	case isCorrupt(err):
		return corruptErr(path, err)
	}
	return err
}

// corruptErr says that the file is damaged and what to do about it.
func corruptErr(path string, err error) error {
	return &storeError{kind: transport.ErrCorrupt, err: err,
		msg: fmt.Sprintf("sqlite transport: %s is damaged (%s); restore it from a backup, or copy what is readable to a new file with `ripple check --salvage NEW.db --url sqlite://%s` and point the URL at NEW.db; never delete the -wal and -shm files beside it", path, sqliteText(err), path)}
}

// storeError is a storage failure of a known kind (ErrStorageFull,
// ErrCorrupt): it matches both the kind and the underlying error.
type storeError struct {
	kind, err error
	msg       string
}

func (e *storeError) Error() string   { return e.msg }
func (e *storeError) Unwrap() []error { return []error{e.kind, e.err} }

// sqliteText is SQLite's own message inside err, without the driver's
// prefixes.
func sqliteText(err error) string {
	var ce interface {
		error
		Code() int
	}
	if errors.As(err, &ce) {
		return ce.Error()
	}
	return err.Error()
}
