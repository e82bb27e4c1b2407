//go:build !unix

package pebblestore

import "os"

// dirID is empty where device and inode numbers are not available: a
// directory is then identified by its real path alone.
type dirID struct{}

func (dirID) String() string { return "" }

func fileID(*os.File) (dirID, error) { return dirID{}, nil }

func pathID(string) (dirID, error) { return dirID{}, nil }

// fchmod does nothing where file modes are not Unix's.
func fchmod(uintptr, os.FileMode) error { return nil }
