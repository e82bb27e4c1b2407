// Package httpconn connects flows to HTTP.
//
// Client (flow type http_client) is a processor that calls an HTTP
// endpoint once per event, with the URL and headers rendered from the
// event, and emits the response as the event's data on "out", or the event
// with meta.error on "err". See docs/http.md.
package httpconn
