// SPDX-License-Identifier: Apache-2.0

package boltfile

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"os"
	"runtime/debug"
	"syscall"
)

// The layout of a bbolt file, format version 2, as bbolt's internal/common
// package defines it. Numbers are in the machine's byte order.
const (
	magic         = 0xED0CDAED
	formatVersion = 2

	// A page starts with its ID (8 bytes), flags (2), count of entries (2)
	// and count of overflow pages that follow it (4).
	pageHeaderSize = 16
	// A branch entry is pos (4), key size (4), child page ID (8); a leaf
	// entry is flags (4), pos (4), key size (4), value size (4). pos is
	// where the key starts, from the entry's own first byte; a leaf value
	// follows its key.
	entrySize = 16
	// A bucket's value is its root page ID (8) and sequence (8), then, when
	// the root is 0, the bucket's only page, inline.
	bucketHeaderSize = 16

	// The meta follows the page header of pages 0 and 1: magic, version,
	// page size, flags (4 each), the root bucket's header (16), the free
	// list's page ID, the high-water mark (the number of pages in use), the
	// transaction ID and the FNV-64a checksum of all before it (8 each).
	metaSize       = 64
	metaChecksumAt = 56

	branchPage   = 0x01
	leafPage     = 0x02
	freelistPage = 0x10
	bucketEntry  = 0x01

	noFreelist = ^uint64(0)
	// A free list page whose count is this holds its real count in its
	// first 8 bytes.
	freelistCountOverflow = 0xFFFF
)

var order = binary.NativeEndian

type meta struct {
	pageSize uint64
	root     uint64
	freelist uint64
	pages    uint64
	txid     uint64
}

// decodeMeta decodes the meta in b, the first pageHeaderSize+metaSize bytes
// of a meta page.
func decodeMeta(b []byte) (meta, error) {
	b = b[pageHeaderSize:]
	switch {
	case order.Uint32(b) != magic:
		return meta{}, fmt.Errorf("not a bbolt meta page")
	case order.Uint32(b[4:]) != formatVersion:
		return meta{}, fmt.Errorf("format version %d, not %d", order.Uint32(b[4:]), formatVersion)
	}
	h := fnv.New64a()
	h.Write(b[:metaChecksumAt])
	if h.Sum64() != order.Uint64(b[metaChecksumAt:]) {
		return meta{}, fmt.Errorf("checksum mismatch")
	}
	m := meta{
		pageSize: uint64(order.Uint32(b[8:])),
		root:     order.Uint64(b[16:]),
		freelist: order.Uint64(b[32:]),
		pages:    order.Uint64(b[40:]),
		txid:     order.Uint64(b[48:]),
	}
	// bbolt reads page sizes from 1 KiB to 16 MiB.
	if m.pageSize < 1<<10 || m.pageSize > 1<<24 || m.pageSize&(m.pageSize-1) != 0 {
		return meta{}, fmt.Errorf("page size %d", m.pageSize)
	}
	return m, nil
}

// walker reads a bbolt file's pages from data, a memory map of the file
// made for the walk, checking each page before anything follows a number
// in it. Slicing data is bounds-checked, so damage cannot lead it outside
// the file, unlike bbolt's own reads of its map.
type walker struct {
	data     []byte
	pageSize uint64
	pages    uint64
	// used marks the pages met so far, meta pages and free list included.
	used []bool
}

// walkFile checks the file at path as the package comment says. It returns
// an error wrapping ErrDamaged for damage, another for a failed read.
func walkFile(path string) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("check file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("check file: %w", err)
	}
	if fi.Size() < pageHeaderSize+metaSize {
		return damaged("it is %d bytes long, too short for a bbolt file", fi.Size())
	}
	if fi.Size() != int64(int(fi.Size())) {
		return fmt.Errorf("check file: %d bytes are more than this machine can map", fi.Size())
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("check file: map it: %w", err)
	}
	defer syscall.Munmap(data)
	// The file is locked against bbolt writers, but whatever cuts it
	// short while it is read makes the map fault: fail, do not crash.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("check file: it changed while being read: %v", p)
		}
	}()
	return walk(data)
}

// walk checks data, a whole bbolt file.
func walk(data []byte) error {
	size := uint64(len(data))
	m, err := decodeMeta(data)
	if err != nil {
		return damaged("meta page 0: %v", err)
	}
	if size < m.pageSize+pageHeaderSize+metaSize {
		return damaged("it is %d bytes long, too short for its two meta pages of %d bytes", size, m.pageSize)
	}
	m1, err := decodeMeta(data[m.pageSize:])
	if err != nil {
		return damaged("meta page 1: %v", err)
	}
	if m1.pageSize != m.pageSize {
		return damaged("meta page 0 says pages are %d bytes, meta page 1 %d", m.pageSize, m1.pageSize)
	}
	// bbolt uses the meta of the later transaction.
	if m1.txid > m.txid {
		m = m1
	}
	if m.pages < 4 || m.pages > size/m.pageSize {
		return damaged("its meta page counts %d pages of %d bytes, but it is %d bytes long: it was cut short", m.pages, m.pageSize, size)
	}

	w := &walker{data: data, pageSize: m.pageSize, pages: m.pages, used: make([]bool, m.pages)}
	w.used[0], w.used[1] = true, true
	if m.freelist != noFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return err
		}
	}
	return w.tree(m.root)
}

// page returns page id with its overflow pages, checking that they lie in
// the file, that no page was met before, and that the page names itself.
func (w *walker) page(id uint64) ([]byte, error) {
	if id < 2 || id >= w.pages {
		return nil, damaged("a reference to page %d, outside the file's pages 2 to %d", id, w.pages-1)
	}
	p := w.data[id*w.pageSize : (id+1)*w.pageSize]
	if got := order.Uint64(p); got != id {
		return nil, damaged("page %d says it is page %d", id, got)
	}
	overflow := uint64(order.Uint32(p[12:]))
	if overflow >= w.pages-id {
		return nil, damaged("page %d runs %d pages past the last page", id, overflow-(w.pages-id)+1)
	}
	for i := id; i <= id+overflow; i++ {
		if w.used[i] {
			return nil, damaged("page %d is used twice", i)
		}
		w.used[i] = true
	}
	return w.data[id*w.pageSize : (id+1+overflow)*w.pageSize], nil
}

func (w *walker) freelist(id uint64) error {
	p, err := w.page(id)
	if err != nil {
		return err
	}
	if flags := order.Uint16(p[8:]); flags != freelistPage {
		return damaged("free list page %d is of type %#x", id, flags)
	}
	ids := p[pageHeaderSize:]
	n := uint64(order.Uint16(p[10:]))
	if n == freelistCountOverflow {
		if len(ids) < 8 {
			return damaged("free list page %d is too short for its count", id)
		}
		n, ids = order.Uint64(ids), ids[8:]
	}
	if n > uint64(len(ids))/8 {
		return damaged("free list page %d counts %d pages, more than it holds", id, n)
	}
	for i := range n {
		if free := order.Uint64(ids[8*i:]); free < 2 || free >= w.pages {
			return damaged("the free list names page %d, outside the file's pages 2 to %d", free, w.pages-1)
		}
	}
	return nil
}

// tree checks the B+tree rooted at page id.
func (w *walker) tree(id uint64) error {
	p, err := w.page(id)
	if err != nil {
		return err
	}
	where := fmt.Sprintf("page %d", id)
	switch flags := order.Uint16(p[8:]); flags {
	case leafPage:
		return w.leaf(p, where)
	case branchPage:
		n, err := entries(p, where)
		if err != nil {
			return err
		}
		if n == 0 {
			return damaged("branch %s has no entries", where)
		}
		for i := range n {
			e := p[pageHeaderSize+i*entrySize:]
			pos, ksize := uint64(order.Uint32(e)), uint64(order.Uint32(e[4:]))
			if pos+ksize > uint64(len(e)) {
				return damaged("key %d of %s lies outside it", i, where)
			}
			if err := w.tree(order.Uint64(e[8:])); err != nil {
				return err
			}
		}
		return nil
	default:
		return damaged("%s is of type %#x where a branch or leaf should be", where, flags)
	}
}

// leaf checks the entries of leaf page p, a page of the file or a bucket's
// inline page, and the buckets they hold.
func (w *walker) leaf(p []byte, where string) error {
	n, err := entries(p, where)
	if err != nil {
		return err
	}
	for i := range n {
		e := p[pageHeaderSize+i*entrySize:]
		pos, ksize, vsize := uint64(order.Uint32(e[4:])), uint64(order.Uint32(e[8:])), uint64(order.Uint32(e[12:]))
		if pos+ksize+vsize > uint64(len(e)) {
			return damaged("entry %d of %s lies outside it", i, where)
		}
		if order.Uint32(e)&bucketEntry == 0 {
			continue
		}
		if err := w.bucket(e[pos+ksize:pos+ksize+vsize], fmt.Sprintf("entry %d of %s", i, where)); err != nil {
			return err
		}
	}
	return nil
}

// bucket checks the bucket whose value is v.
func (w *walker) bucket(v []byte, where string) error {
	if len(v) < bucketHeaderSize {
		return damaged("the bucket in %s is %d bytes long", where, len(v))
	}
	if root := order.Uint64(v); root != 0 {
		return w.tree(root)
	}
	inline := v[bucketHeaderSize:]
	if len(inline) < pageHeaderSize || order.Uint16(inline[8:]) != leafPage {
		return damaged("the inline bucket in %s has no valid page", where)
	}
	return w.leaf(inline, "the inline bucket in "+where)
}

// entries returns the number of entries of page p, checking that they lie
// inside it.
func entries(p []byte, where string) (int, error) {
	n := int(order.Uint16(p[10:]))
	if pageHeaderSize+n*entrySize > len(p) {
		return 0, damaged("%s counts %d entries, more than it holds", where, n)
	}
	return n, nil
}
