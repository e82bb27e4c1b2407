package pebblestore

import (
	"hash/maphash"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/batchrepr"
)

// rowCacheShards is the number of independently locked parts of the row
// cache, so that View readers in several goroutines and the writer rarely
// wait for one another.
const rowCacheShards = 16

// rowEntryOverhead approximates the memory of one entry beyond its
// allocation: its table slots (see rowTable), its ring slot, and the
// allocator's rounding.
const rowEntryOverhead = 128

// rowCache holds recently read or written stored records by key, exactly as
// Pebble holds them, and remembers keys known to be absent, so that point
// reads of hot keys skip Pebble. Scans never use it.
//
// Coherence: only the store's committer goroutine changes the database, and
// it updates the cache itself right after each group's Pebble batch is applied
// (publish).
// Everyone else may only fill the cache with what they read from the
// database, and only when no publish overlapped their read: epoch is odd
// from just before a Pebble batch is applied until the cache reflects it, and a
// fill is accepted only if epoch was even when the reader loaded it before
// its database read and is still that value when the fill takes the shard
// lock. So, outside a publish, every entry equals the database's record;
// during one, an entry is either the database's record or the one the
// database held before the Pebble batch being published, which no released result
// depends on yet.
//
// Why the epoch is odd during the apply itself, not merely bumped before
// the cache is updated: a reader that read the database just after the
// apply could otherwise return the new record, and a reader whose older
// read straddled the apply could then still insert the old record (the
// epoch not yet bumped), so the first reader's next read would go back in
// time until the publish reached the key. For the same reason a fill that
// finds the key already cached returns the cached record instead of its
// own: that entry is never older than a released write, and a reader never
// sees a key's record go backwards.
type rowCache struct {
	seed   maphash.Seed
	epoch  atomic.Uint64
	shards [rowCacheShards]rowShard
	// pub is publish's scratch; only the committer publishes, one group
	// at a time.
	pub struct {
		recs  []publishedRecord
		order []int32
		sink  byte // what publish loaded ahead, kept so that the loads are not dropped
	}
}

type rowShard struct {
	mu sync.Mutex
	// entries and ring hold the same entries: the ring is the eviction
	// order, the next to go at its head (see evict). Our own table and
	// ring rather than a cache library's: the writer updates entries
	// through pointers it already holds, which such libraries only offer
	// by key (a second hash lookup per read and per write), and an entry
	// here is one pointer-free allocation (see rowEntry) where theirs are
	// four or five, every one of them read by the garbage collector at
	// each cycle and a memory access on a lookup.
	entries rowTable
	seed    maphash.Seed // the cache's, to hash a key again
	// ring holds the cached entries from oldest (at head) to newest (at
	// the end), with holes (nil) where entries left out of turn: the
	// eviction order as a queue of pointers rather than a list threaded
	// through the entries, so that an entry holds no pointer and the
	// garbage collector marks it without reading it (see rowEntry).
	ring   []*rowEntry
	head   int // ring's oldest slot in use
	holes  int // nil slots in ring[head:]
	count  int
	bytes  int64 // accounted size of the entries
	budget int64
	// writeAdmit is what written keys may still bring into the shard, in
	// accounted bytes (see update).
	writeAdmit int64
	index      int // in rowCache.shards
	hits       uint64
	misses     uint64
	_          [64]byte // keep the shards' locks on separate cache lines
}

// rowEntry is a cached stored record, or the knowledge that the key is
// absent.
//
// An entry is one allocation holding its fields and then its key followed
// by its record (see allocRowEntry), so a lookup whose hash matches (see
// rowTable) compares the key in the memory it then reads the record from,
// one dependent memory access per hit instead of two. The allocation holds
// no pointer: the garbage collector, at every cycle, only sets a bit for
// each entry (found through the table and the shard's ring) instead of
// reading it and following its pointers. With 100,000 cached keys, entries
// with pointers made most of a cycle's marking, and a cycle on two cores
// is a burst of latency for the flow.
type rowEntry struct {
	pos    int32  // index in the shard's ring while cached
	dlen   uint32 // bytes of key and record in the entry's buffer
	dcap   uint32 // bytes the buffer holds
	keyLen uint16
	// byWrite marks an entry a write brought into the cache (see
	// rowShard.update) and no read has used since.
	byWrite bool
	absent  bool
	// referenced records a use since the entry was added or last
	// spared by evict.
	referenced bool
	// cached says the entry is in its shard's table and ring; an entry
	// that left is never cached again, nor changed.
	cached bool
	// fresh marks an entry made by the writer for a key it read from the
	// previous group's Pebble batch, not yet in the cache: publish adds it with
	// the group's record for the key.
	fresh bool
}

// rowEntryHeader is the size of an entry's fields, before its buffer.
const rowEntryHeader = (int(unsafe.Sizeof(rowEntry{})) + 7) &^ 7

// allocRowEntry returns a new entry with room for n bytes of key and
// record, in memory the garbage collector does not scan (words of
// uint64).
func allocRowEntry(n int) *rowEntry {
	// At least one byte past the fields, so that the buffer's address is
	// inside the allocation even when it is empty.
	words := make([]uint64, (rowEntryHeader+max(n, 1)+7)/8)
	e := (*rowEntry)(unsafe.Pointer(unsafe.SliceData(words)))
	e.dcap = uint32(len(words)*8 - rowEntryHeader)
	return e
}

// bufStart is the address of the entry's buffer, just past its fields.
func (e *rowEntry) bufStart() *byte {
	return (*byte)(unsafe.Add(unsafe.Pointer(e), rowEntryHeader))
}

// buf returns the entry's whole buffer.
func (e *rowEntry) buf() []byte { return unsafe.Slice(e.bufStart(), e.dcap) }

// data returns the key followed by the record.
func (e *rowEntry) data() []byte { return e.buf()[:e.dlen:e.dlen] }

// newRowEntry returns an entry, not cached, for key holding rec or absent;
// nil for a key too long to cache (over 64 KiB).
func newRowEntry(key, rec []byte, absent bool) *rowEntry {
	if len(key) > math.MaxUint16 || len(key)+len(rec) > math.MaxUint32/2 {
		return nil
	}
	if absent {
		rec = nil
	}
	e := allocRowEntry(len(key) + len(rec))
	b := e.buf()
	copy(b[copy(b, key):], rec)
	e.dlen, e.keyLen, e.absent = uint32(len(key)+len(rec)), uint16(len(key)), absent
	return e
}

// key returns the entry's key, viewing its buffer.
func (e *rowEntry) key() string { return unsafe.String(e.bufStart(), int(e.keyLen)) }

// rec returns the record; appending to it copies.
func (e *rowEntry) rec() []byte { return e.buf()[e.keyLen:e.dlen:e.dlen] }

// set gives the entry rec, or makes the key absent, in its buffer, and
// reports whether it fitted; when it did not, the entry is unchanged and
// the key needs a new entry (see rowShard.update).
func (e *rowEntry) set(rec []byte, absent bool) (fits bool) {
	if absent {
		rec = nil
	}
	n := int(e.keyLen) + len(rec)
	if n > int(e.dcap) {
		return false
	}
	copy(e.buf()[e.keyLen:], rec)
	e.dlen, e.absent = uint32(n), absent
	return true
}

// size is the entry's accounted memory: its allocation and what the
// shard spends on it (see rowEntryOverhead).
func (e *rowEntry) size() int64 {
	return int64(rowEntryHeader) + int64(e.dcap) + rowEntryOverhead
}

// newRowCache returns a cache of at most budget accounted bytes, or nil
// (no cache) for a budget too small to hold anything.
func newRowCache(budget int64) *rowCache { return newRowCacheSeed(budget, maphash.MakeSeed()) }

// newRowCacheSeed is newRowCache hashing keys with seed (rowHash), so that
// the writer's unapplied indexes, given the same seed, share its hashes.
func newRowCacheSeed(budget int64, seed maphash.Seed) *rowCache {
	per := budget / rowCacheShards
	if per <= rowEntryOverhead {
		return nil
	}
	c := &rowCache{seed: seed}
	for i := range c.shards {
		sh := &c.shards[i]
		sh.budget = per
		sh.writeAdmit = per
		sh.index = i
		sh.seed = c.seed
	}
	return c
}

// shard returns key's shard and hash: the hash chooses the shard with its
// low bits and the key's slots in the shard's table with the others, so a
// key is hashed once per lookup.
func (c *rowCache) shard(key []byte) (*rowShard, uint64) {
	h := rowHash(c.seed, key)
	return &c.shards[h%rowCacheShards], h
}

func (c *rowCache) shardIndex(key []byte) int {
	return int(rowHash(c.seed, key) % rowCacheShards)
}

// get looks key up. On a hit it appends the cached record to dst (so it
// stays valid whatever the writer does next) or reports the key absent.
func (c *rowCache) get(key, dst []byte) (rec []byte, absent, hit bool) {
	sh, h := c.shard(key)
	sh.mu.Lock()
	e := sh.lookup(h, key)
	if e == nil {
		sh.mu.Unlock()
		return dst, false, false
	}
	absent = e.absent
	if !absent {
		dst = append(dst, e.rec()...)
	}
	sh.mu.Unlock()
	return dst, absent, true
}

// writerGet is get for the writer goroutine: it returns the cached entry
// itself, or nil. An entry's record changes only when a group writing its
// key is published; the writer reads the keys of the group being
// published from that group's Pebble batch instead, and groups before it were
// published before the current one started. So the writer may read e.rec
// and e.absent without the shard lock while it builds the group; it also
// keeps e, for publish to update when the group is applied. h is key's
// rowHash with the cache's seed, which the writer computed once for all its
// lookups of key.
func (c *rowCache) writerGet(key []byte, h uint64) *rowEntry {
	sh := &c.shards[h%rowCacheShards]
	sh.mu.Lock()
	e := sh.lookup(h, key)
	sh.mu.Unlock()
	return e
}

// lookup returns key's entry, h being key's hash, counted as a hit and
// touched, or nil, counted as a miss. The caller holds sh.mu.
func (sh *rowShard) lookup(h uint64, key []byte) *rowEntry {
	e := sh.entries.find(h, key)
	if e == nil {
		sh.misses++
		return nil
	}
	sh.hits++
	sh.touch(e)
	return e
}

// probeScratch is the working memory of prefetch, reused from batch to
// batch by one goroutine at a time.
type probeScratch struct {
	keys   [][]byte // Store.prefetch's
	hashes []uint64
	order  []int32
	ents   []*rowEntry
	sink   byte // what prefetch read, kept so that the loads are not dropped
}

// prefetch looks keys up in one batch so that the reads of them that
// follow find the table slots and entries they need in the processor's
// caches. A cached read costs two dependent loads from memory, the key's
// slot and then its entry, each a cache miss when the cache is large; one
// read after another, every miss is waited for in turn. Here the loads of
// many keys do not depend on one another, so the processor overlaps their
// misses: first every key's home slot, then every entry found there. It
// changes nothing in the cache and counts neither hits nor misses; a key
// not at its home slot is passed over (only speed is lost). The keys are
// taken shard by shard, one hold of each shard's lock, as publish does.
// It returns the keys' hashes, in sc's memory.
func (c *rowCache) prefetch(keys [][]byte, sc *probeScratch) (hashes []uint64) {
	n := len(keys)
	if n == 0 {
		return nil
	}
	hashes = slices.Grow(sc.hashes[:0], n)[:n]
	var perShard [rowCacheShards]int32
	for i, k := range keys {
		h := rowHash(c.seed, k)
		hashes[i] = h
		perShard[h%rowCacheShards]++
	}
	var start [rowCacheShards + 1]int32
	for i, m := range perShard {
		start[i+1] = start[i] + m
	}
	order := slices.Grow(sc.order[:0], n)[:n]
	next := start
	for i, h := range hashes {
		sh := h % rowCacheShards
		order[next[sh]] = int32(i)
		next[sh]++
	}
	ents := slices.Grow(sc.ents[:0], n)[:n]
	sink := sc.sink
	for i := range c.shards {
		if perShard[i] == 0 {
			continue
		}
		sh := &c.shards[i]
		idx := order[start[i]:start[i+1]]
		found := ents[:0]
		sh.mu.Lock()
		if slots := sh.entries.slots; len(slots) > 0 {
			for _, j := range idx {
				h := hashes[j]
				if sl := &slots[sh.entries.home(h)]; sl.hash == h {
					found = append(found, sl.e)
				}
			}
			for _, e := range found {
				if d := e.data(); len(d) > 0 {
					sink ^= d[0] ^ d[len(d)-1]
				}
			}
		}
		sh.mu.Unlock()
		clear(found)
	}
	sc.hashes, sc.order, sc.ents, sc.sink = hashes, order[:0], ents[:0], sink
	return hashes
}

// writerFill is fill for the writer goroutine, whose database reads are
// always current (it reads keys the group being published wrote from that
// group's Pebble batch, not from the database): it caches what the writer read unless the key is cached
// already (then with the same record), and returns the entry, or nil when
// the record is too large to keep.
func (c *rowCache) writerFill(key, rec []byte, absent bool) *rowEntry {
	return c.writerFillHash(key, rowHash(c.seed, key), rec, absent)
}

// writerFillHash is writerFill for a caller that has hashed key already
// (rowHash with the cache's seed).
func (c *rowCache) writerFillHash(key []byte, h uint64, rec []byte, absent bool) *rowEntry {
	sh := &c.shards[h%rowCacheShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.entries.find(h, key); e != nil {
		sh.touch(e)
		return e
	}
	e := newRowEntry(key, rec, absent)
	if e == nil || !sh.add(h, e) {
		return nil
	}
	return e
}

// beginRead returns the epoch a reader outside the writer loads before
// reading the database, for fill.
func (c *rowCache) beginRead() uint64 { return c.epoch.Load() }

// fill offers the cache what a reader found in the database for key (rec,
// or absent), having loaded epoch with beginRead before the read. It returns
// the record the reader should use: the cached one if the key is cached by
// now, which may be older than the reader's but is never older than a
// released write, and keeps every reader's successive reads of a key
// monotonic; otherwise the reader's own, which is cached when no publish
// overlapped the read. rec is appended to dst when it comes from the cache.
// The writer goroutine uses writerFill instead.
func (c *rowCache) fill(key, rec []byte, absent bool, epoch uint64, dst []byte) ([]byte, bool) {
	sh, h := c.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e := sh.entries.find(h, key); e != nil {
		sh.touch(e)
		if e.absent {
			return dst, true
		}
		return append(dst, e.rec()...), false
	}
	if epoch&1 != 0 || c.epoch.Load() != epoch {
		return rec, absent
	}
	if e := newRowEntry(key, rec, absent); e != nil {
		sh.add(h, e)
	}
	return rec, absent
}

// add inserts e, new and not cached, h being its key's hash, and evicts
// entries while the shard is over its budget. An entry larger than the
// budget is not kept; add reports whether e was.
func (sh *rowShard) add(h uint64, e *rowEntry) bool {
	n := e.size()
	if n > sh.budget {
		return false
	}
	e.referenced, e.cached = false, true
	sh.pushNewest(e)
	sh.entries.insert(h, e)
	sh.count++
	sh.bytes += n
	sh.evict()
	return e.cached
}

// remove takes e out of the shard.
func (sh *rowShard) remove(e *rowEntry) {
	sh.unlink(e)
	sh.drop(e)
}

// drop takes e, out of the ring already, out of the table.
func (sh *rowShard) drop(e *rowEntry) {
	sh.entries.delete(rowHashString(sh.seed, e.key()), e)
	e.cached = false
	sh.count--
	sh.bytes -= e.size()
}

// pushNewest puts e, not in the ring, at its newest end.
func (sh *rowShard) pushNewest(e *rowEntry) {
	if sh.head+sh.holes > len(sh.ring)/2 && len(sh.ring) >= 64 {
		sh.compact()
	}
	e.pos = int32(len(sh.ring))
	sh.ring = append(sh.ring, e)
}

// compact moves the ring's entries to its front, in order, dropping the
// holes.
func (sh *rowShard) compact() {
	j := 0
	for _, e := range sh.ring[sh.head:] {
		if e != nil {
			sh.ring[j], e.pos = e, int32(j)
			j++
		}
	}
	clear(sh.ring[j:])
	sh.ring, sh.head, sh.holes = sh.ring[:j], 0, 0
}

// unlink takes e out of the ring, leaving a hole.
func (sh *rowShard) unlink(e *rowEntry) {
	sh.ring[e.pos], e.pos = nil, -1
	sh.holes++
}

// popOldest takes the oldest entry out of the ring; nil when it is empty.
func (sh *rowShard) popOldest() *rowEntry {
	for sh.head < len(sh.ring) {
		e := sh.ring[sh.head]
		sh.ring[sh.head] = nil
		sh.head++
		if e != nil {
			e.pos = -1
			return e
		}
		sh.holes--
	}
	return nil
}

// touch records a use of e. Moving an entry to the newest end on every
// hit would write the ring on every read; marking the entry, which the
// lookup has just loaded, costs nothing, and evict gives a marked entry a
// second chance instead.
func (sh *rowShard) touch(e *rowEntry) {
	if !e.referenced || e.byWrite {
		e.referenced, e.byWrite = true, false
	}
}

// evict removes entries from the oldest end of the ring while the shard is
// over its budget: an entry used since it got there is moved to the newest
// end with its mark cleared (a second chance, as CLOCK gives), so that
// entries read again survive and those not read since they were added go
// first. Each round clears a mark or removes an entry, so it ends.
func (sh *rowShard) evict() {
	for sh.bytes > sh.budget {
		e := sh.popOldest()
		if e == nil {
			sh.bytes = 0
			return
		}
		if e.referenced {
			e.referenced = false
			sh.pushNewest(e)
			continue
		}
		sh.drop(e)
	}
}

// publish brings the cache up to date with repr, the representation of a
// Pebble batch the committer has just applied to the database: every cached key the
// Pebble batch sets or deletes takes its new record (or becomes absent), and a
// range deletion empties the cache. Keys the Pebble batch writes that are not
// cached are added only while the cache is cold, and leave it when written
// again unread (see rowShard.update): a write-only workload would otherwise
// pay for copying every record into a cache its reads never use; a
// read-modify-write has already cached the key when it read it.
//
// known, when not nil, holds for each record of repr in order what the
// writer knows of it (recordKnown): the entry it read for the key
// (writerGet, writerFill), or nil, and the key's hash. Such an entry still
// in the cache is updated directly, without looking its key up, and a key
// whose hash is known is not hashed again. Only the committer calls
// publish, between beginPublish and endPublish, one group at a time.
func (c *rowCache) publish(repr []byte, known []knownRecord) {
	// The records are applied shard by shard, each under one hold of its
	// lock, in Pebble batch order within a shard (a key's records all fall in one
	// shard, so its last record is applied last). Taking a lock per record
	// would cost more than the updates: its atomic instructions also keep
	// the processor from overlapping one record's cache misses with the
	// next one's.
	recs := c.pub.recs[:0]
	var perShard [rowCacheShards]int32
	r := batchrepr.Read(repr)
	for i := 0; ; i++ {
		kind, key, value, ok, err := r.Next()
		if err != nil {
			// A Pebble batch we built ourselves does not fail to decode; if it
			// did, forgetting everything is always coherent.
			c.clear()
			return
		}
		if !ok {
			break
		}
		if kind != pebble.InternalKeyKindSet && kind != pebble.InternalKeyKindDelete {
			// A range deletion (clear), or anything unforeseen: an empty
			// cache agrees with any database, and the Pebble batch's other
			// records need not be applied to it.
			c.clear()
			return
		}
		rec := publishedRecord{key: key, value: value, absent: kind == pebble.InternalKeyKindDelete}
		if i < len(known) {
			rec.known, rec.hash = known[i].entry, known[i].hash
		}
		if rec.hash == 0 { // rowHash never returns 0
			rec.hash = rowHash(c.seed, key)
		}
		// The shard comes from the hash, not from the known entry: the
		// entry's memory is loaded once, below.
		perShard[rec.hash%rowCacheShards]++
		recs = append(recs, rec)
	}
	c.pub.recs = recs
	// Order the records by shard, keeping Pebble batch order within each.
	var start [rowCacheShards + 1]int32
	for i, n := range perShard {
		start[i+1] = start[i] + n
	}
	order := slices.Grow(c.pub.order[:0], len(recs))[:len(recs)]
	c.pub.order = order
	next := start
	for i := range recs {
		sh := recs[i].hash % rowCacheShards
		order[next[sh]] = int32(i)
		next[sh]++
	}
	sink := c.pub.sink
	for i := range c.shards {
		if perShard[i] == 0 {
			continue
		}
		sh := &c.shards[i]
		idx := order[start[i]:start[i+1]]
		// Load every known entry of the shard, and the end of its
		// record, before updating any: the writer read them on another
		// processor, so each is a cache miss here, and loads that do not
		// depend on one another overlap their misses where the updates,
		// one after another, would wait for each in turn. Only the
		// committer writes an entry's data and key length, so the loads
		// need no lock.
		for _, j := range idx {
			if e := recs[j].known; e != nil {
				if d := e.data(); len(d) > 0 {
					sink ^= d[len(d)-1]
				}
			}
		}
		sh.mu.Lock()
		for _, j := range idx {
			rec := &recs[j]
			sh.update(rec.known, rec.hash, rec.key, rec.value, rec.absent)
		}
		sh.mu.Unlock()
	}
	c.pub.sink = sink
	clear(recs) // drop the references into repr until the next group
}

// knownRecord is what the writer knows of one record of a group's Pebble
// batch, for publish: the row cache entry it read for the record's key,
// or nil, and the key's hash (rowHash with the cache's seed; 0 for
// unknown).
type knownRecord struct {
	entry *rowEntry
	hash  uint64
}

// publishedRecord is one record of a Pebble batch being published.
type publishedRecord struct {
	key, value []byte
	absent     bool
	known      *rowEntry
	hash       uint64
}

// beginPublish makes epoch odd: no fill from a database read that may
// overlap the coming publish is accepted until endPublish.
func (c *rowCache) beginPublish() { c.epoch.Add(1) }

// endPublish makes epoch even again: fills from reads that start after the
// cache reflects the published Pebble batch are accepted.
func (c *rowCache) endPublish() { c.epoch.Add(1) }

// update sets a cached key to rec (or absent), reusing the cached record's
// memory when it is large enough. A key not cached is added when known is
// fresh (the writer read the key from the previous group's Pebble batch,
// where a read from the database would have cached it), and, while the
// shard is cold, when it is set, so that the keys a load writes are found
// by the reads that follow it instead of each missing once. The shard
// stays cold until written keys have brought a budget's worth of bytes
// into it (writeAdmit), or until a key brought in by a write is written
// again before any read used it: that key leaves the cache instead of
// being updated, and the shard takes in no more written keys, so that
// traffic that rewrites keys stops paying for copies into the cache at
// once. Otherwise keys not cached are left alone: once warm, only reads
// bring keys in.
// Recency
// is left alone too: it follows reads, and a read-modify-write has just
// made the key recent; moving it again would cost list updates on every
// write for nothing. known is the key's entry as the writer read it during
// the group, or nil; if it left the cache since, the key is looked up, as
// a reader may have cached it again. h is key's rowHash.
// The caller holds sh.mu, sh being key's shard.
func (sh *rowShard) update(known *rowEntry, h uint64, key, rec []byte, absent bool) {
	e := known // always key's entry: recordKnown pairs them
	if e == nil || !e.cached {
		cached := sh.entries.find(h, key)
		switch {
		case cached != nil:
			e = cached
		case known != nil && known.fresh:
			known.fresh = false
			if !known.set(rec, absent) {
				// Too large for the entry the writer made: a new one.
				// known stays out of the cache, as an entry that left.
				if known = newRowEntry(key, rec, absent); known == nil {
					return
				}
			}
			sh.add(h, known)
			return
		case !absent && sh.writeAdmit > 0:
			if e := newRowEntry(key, rec, false); e != nil {
				e.byWrite = true
				sh.writeAdmit -= e.size()
				sh.add(h, e)
			}
			return
		default:
			return
		}
	}
	if e.byWrite {
		// Written again before any read: the traffic rewrites keys rather
		// than loading them, and the shard is no longer cold.
		sh.remove(e)
		sh.writeAdmit = 0
		return
	}
	before := e.size()
	if !e.set(rec, absent) {
		// Too large for e's buffer: the key gets a new entry in e's
		// place in the table and the ring, and e leaves, unchanged.
		ne := newRowEntry(key, rec, absent)
		if ne == nil {
			sh.remove(e)
			return
		}
		sh.entries.delete(h, e)
		ne.pos, ne.referenced, ne.cached = e.pos, e.referenced, true
		sh.ring[e.pos] = ne
		e.pos, e.cached = -1, false
		sh.entries.insert(h, ne)
		e = ne
	}
	after := e.size()
	if after > sh.budget {
		sh.bytes += after - before
		sh.remove(e)
		return
	}
	sh.bytes += after - before
	sh.evict()
}

// clear forgets every entry.
func (c *rowCache) clear() {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for _, e := range sh.ring[sh.head:] {
			if e != nil {
				e.cached, e.pos = false, -1
			}
		}
		clear(sh.ring)
		sh.entries.reset()
		sh.ring, sh.head, sh.holes, sh.count = sh.ring[:0], 0, 0, 0
		sh.bytes = 0
		sh.mu.Unlock()
	}
}

// RowCacheStats describes the row cache of a Store.
type RowCacheStats struct {
	// Hits and Misses count point reads answered by the cache and those
	// that went to the database, since the store opened. Reads of keys the
	// transaction itself wrote, and reads after a range deletion in the
	// same commit group, bypass the cache and are not counted.
	Hits, Misses uint64
	// PreviousGroup counts the writer's point reads of keys the previous
	// commit group wrote, answered from that group's Pebble batch while it was
	// still being applied: neither the cache nor the database was read.
	// Counted whether or not the cache is enabled.
	PreviousGroup uint64
	// Prefetched counts the keys of read hints looked up in batches ahead
	// of the reads (Store.ViewHinted, Store.SubmitHinted): work done for
	// speed, not reads.
	Prefetched uint64
	// Entries is the number of cached keys (absent ones included) and
	// Bytes their accounted size, at most Options.RowCacheBytes.
	Entries int
	Bytes   int64
}

func (c *rowCache) stats() RowCacheStats {
	var st RowCacheStats
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		st.Hits += sh.hits
		st.Misses += sh.misses
		st.Entries += sh.count
		st.Bytes += sh.bytes
		sh.mu.Unlock()
	}
	return st
}
