package jsonl

import (
	"context"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/pipeline"
)

// This file declares the jsonl connectors for flow files: stdin, stdout,
// file and null.

func codecField() component.Field {
	return component.Field{Name: "codec", Type: component.TypeEnum, Enum: []string{CodecEvent, CodecJSON}, Default: CodecEvent,
		Doc: `"event": each line is {"data": ..., "meta": {...}}; "json": each line is the payload alone (metadata empty on read, dropped on write).`}
}

// maxLineField bounds ReaderOptions.MaxLineBytes: NewReader takes 0 for
// the default, and a line is held whole in memory.
func maxLineField() component.Field {
	return component.Field{Name: "max_line_bytes", Type: component.TypeByteSize, Default: "16MiB", Min: "1", Max: "1GiB",
		Doc: "Longest accepted input line; longer lines are skipped and reported on err."}
}

func readerOptions(c *component.Config) ReaderOptions {
	return ReaderOptions{Name: c.Node, Codec: c.String("codec"), MaxLineBytes: int(c.ByteSize("max_line_bytes"))}
}

var readerPorts = component.StaticPorts(pipeline.PortOut, pipeline.PortErr)

// StdinSpec declares the stdin source: events read from Env.Stdin.
func StdinSpec() component.Spec {
	return component.Spec{
		Type:       "stdin",
		Kind:       component.KindSource,
		OnePerFlow: "reads stdin", // two readers would split the lines between them
		Summary: "Reads events from standard input, one JSON line each, until end of input. " +
			"A malformed line is emitted on `err` with `meta.error` naming the line number, and reading goes on.",
		Fields: []component.Field{codecField(), maxLineField()},
		Ports:  readerPorts,
		Build: func(_ context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			return component.Component{Source: NewReader(env.Stdin, readerOptions(c))}, nil
		},
	}
}

// StdoutSpec declares the stdout sink: events written to Env.Stdout.
func StdoutSpec() component.Spec {
	return component.Spec{
		Type:    "stdout",
		Kind:    component.KindSink,
		Summary: "Writes every event it receives to standard output as one JSON line.",
		Fields:  []component.Field{codecField()},
		Build: func(_ context.Context, env *component.Env, c *component.Config) (component.Component, error) {
			return component.Component{Processor: NewWriter(env.Stdout, WriterOptions{Name: c.Node, Codec: c.String("codec")})}, nil
		},
	}
}

// FileSpec declares the file connector: a source in mode read, a sink
// otherwise. The file is not checked before the flow is built: a replay
// never opens the flow's sources, and an output file is created.
func FileSpec() component.Spec {
	sinkModes := []string{string(ModeWrite), string(ModeAppend), string(ModeTruncate)}
	return component.Spec{
		Type: "file",
		Kind: component.KindSink,
		KindOf: func(c *component.Config) component.Kind {
			if c.String("mode") == string(ModeRead) {
				return component.KindSource
			}
			return component.KindSink
		},
		Summary: "Reads events from a JSON-lines file (`mode: read`, a source) or writes them to one " +
			"(`write` or `truncate`: start empty; `append`: keep what is there; a sink). " +
			"A written file and its directory are created when missing; it is synced to disk when the flow stops.",
		Fields: []component.Field{
			{Name: "path", Type: component.TypePath, Required: true, Doc: "The file, relative to the flow file unless absolute."},
			{Name: "mode", Type: component.TypeEnum, Required: true, Enum: append([]string{string(ModeRead)}, sinkModes...),
				Doc: "read: source; write/truncate: sink starting from an empty file; append: sink adding to the file."},
			codecField(),
			maxLineField(),
			{Name: "follow_symlinks", Type: component.TypeBool, Default: "false",
				OnlyWhen: &component.When{Field: "mode", Values: sinkModes},
				Doc: "write/append/truncate: write through a path that is a symbolic link (to the file it points to); " +
					"by default such a path is refused, so a planted link cannot redirect the output. Links among parent directories are followed."},
		},
		Ports: func(c *component.Config) []string {
			if c.String("mode") == string(ModeRead) {
				return []string{pipeline.PortOut, pipeline.PortErr}
			}
			return nil
		},
		PortsDoc: "`out`, `err` in mode read; none otherwise",
		Build: func(_ context.Context, _ *component.Env, c *component.Config) (component.Component, error) {
			mode := Mode(c.String("mode"))
			if mode == ModeRead {
				s, err := OpenFileSource(c.String("path"), readerOptions(c))
				return component.Component{Source: s}, err
			}
			p, err := OpenFileSink(c.String("path"), mode,
				WriterOptions{Name: c.Node, Codec: c.String("codec"), FollowSymlinks: c.Bool("follow_symlinks")})
			return component.Component{Processor: p}, err
		},
	}
}

// NullSpec declares the null sink, which discards every event.
func NullSpec() component.Spec {
	return component.Spec{
		Type:    "null",
		Kind:    component.KindSink,
		Summary: "Discards every event it receives.",
		Build: func(context.Context, *component.Env, *component.Config) (component.Component, error) {
			return component.Component{Processor: NewNull()}, nil
		},
	}
}
