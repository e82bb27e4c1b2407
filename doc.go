// Package flowrun embeds flowrun's durable key-value store in a Go program.
package flowrun
