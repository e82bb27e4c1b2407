package pebblestore

import (
	"context"
	"fmt"
	"strconv"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv"
)

// This file declares the pebble backend of the kv connector for flow
// files.

// resourceKey holds the Pool of the kv connectors of a build.
var resourceKey = component.NewKey[*Pool]("pebblestore.Pool")

// UsePool makes the kv connectors built with res share their stores
// through p (one per directory), for a process running several flows or
// observing commits. Without it each build gets a pool of its own.
func UsePool(res *component.Resources, p *Pool) { resourceKey.Put(res, p) }

// PoolOf returns the pool the kv connectors built with res share (the one
// given to UsePool), putting a new one there when there is none.
func PoolOf(res *component.Resources) *Pool { return resourceKey.Shared(res, NewPool) }

// Backend declares the pebble backend of the kv connector (kv.Spec): a
// Pebble store in a directory of this machine.
func Backend() kv.BackendSpec {
	return kv.BackendSpec{
		Name: "pebble",
		Doc:  "a directory of this machine",
		Fields: []component.Field{
			{Name: "dir", Aliases: []string{"path"}, Type: component.TypePath, Required: true,
				Doc: "Store directory, relative to the flow file unless absolute; created private (0700) when missing. Connectors whose dir reaches the same directory by any path (a symlink, x/../state) share one store."},
			{Name: "sync", Type: component.TypeBool, Default: "true",
				Doc: "Release results only once their writes are synced to disk. false is faster but a crash of the process (not only of the machine) loses the most recent acknowledged writes."},
			{Name: "max_group", Aliases: []string{"max_batch"}, Type: component.TypeInt, Default: strconv.Itoa(DefaultMaxGroup), Min: "1",
				Doc: "Most commands committed together as one commit group (one disk sync): the store stops taking queued event slices once a group has this many, and a slice is never split, so a group may pass it by up to one slice. The alias max_batch is its former name, deprecated."},
			{Name: "max_group_build", Type: component.TypeDuration, Default: "0s", Min: "0s", Max: "1s",
				Doc: "How long the store may spend running one commit group's commands before it commits the group; the commands already taken go to the next group. Bounds each command's wait for the rest of its group when commands queue up, at some cost in throughput (smaller groups); the commands of one event slice are never split. 0s: groups are bounded by max_group only."},
			{Name: "max_delay", Type: component.TypeDuration, Default: "0s", Max: "1s",
				Doc: "How long a commit group may wait to fill up; 0 commits what is queued at once. Every write of the group waits this long."},
			{Name: "pace_work", Type: component.TypeDuration, Default: DefaultPaceWork.String(), Min: "100us", Max: "1s",
				Doc: "How long each of the store's background flushes and compactions works before it rests for pace_rest, so that on a machine of few cores it leaves processors to the flow while it runs (the tail latency of a load below saturation). Nothing rests while the store stalls writes on them."},
			{Name: "pace_rest", Type: component.TypeDuration, Default: DefaultPaceRest.String(), Min: "0s", Max: "1s",
				Doc: "How long each background flush or compaction sleeps after working for pace_work (2ms each: at most half a processor each). 0s: they run flat out. On 2 cores, 2ms took a quarter off the p99 of puts at half the saturated rate but raised that of increments and slowed a saturated replay by about 5% (docs/performance.md)."},
			{Name: "row_cache", Type: component.TypeByteSize, Default: fmt.Sprintf("%dMiB", DefaultRowCacheBytes>>20),
				Doc: "Memory for recently read and written records kept in front of the store, so reads of hot keys skip the disk structures; reads are exactly as fresh without it. 0 disables it. Connectors sharing a directory share the first one's cache."},
		},
		Open: func(_ context.Context, env *component.Env, c *component.Config) (kv.Backend, string, error) {
			dir := component.StoreDir(env.Resources, c.String("dir"))
			b, err := resourceKey.Shared(env.Resources, NewPool).Open(dir, SpecOptions(env, c))
			return b, strconv.Quote(dir), err
		},
	}
}

// SpecOptions returns the store options a kv connector config of backend
// pebble gives (sync, max_group, max_delay, row_cache), with env's
// logger.
func SpecOptions(env *component.Env, c *component.Config) Options {
	return Options{
		NoSync:   !c.Bool("sync"),
		MaxGroup: c.Int("max_group"),
		MaxDelay: c.Duration("max_delay"),
		Logger:   env.Logger,

		MaxGroupBuild: c.Duration("max_group_build"),
		Pace:          Pace{Work: c.Duration("pace_work"), Rest: c.Duration("pace_rest")},
		NoPace:        c.Duration("pace_rest") == 0,

		RowCacheBytes: rowCacheBytes(c.ByteSize("row_cache")),
	}
}

// rowCacheBytes maps the row_cache option, where 0 disables the cache, to
// Options.RowCacheBytes, where 0 means the default.
func rowCacheBytes(n int64) int64 {
	if n == 0 {
		return -1
	}
	return n
}
