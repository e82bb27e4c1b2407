// Package httpconn connects flows to HTTP.
//
// Server (flow type http_server) is a duplex connector: a source emitting
// each POSTed event on "out", and a sink answering each request with the
// events derived from it that come back, matched by origin through a
// pipeline.Tracker per request. See docs/http.md.
//
// Client (flow type http_client) is a processor that calls an HTTP
// endpoint once per event, with the URL and headers rendered from the
// event, and emits the response as the event's data on "out", or the event
// with meta.error on "err". See docs/http.md.
package httpconn
