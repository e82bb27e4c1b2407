package httpconn_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path"

	"github.com/flowrun/flowrun/connectors/httpconn"
	"github.com/flowrun/flowrun/pipeline"
)

// printer is a pipeline.Emitter printing each event with its port.
type printer struct{}

func (printer) Emit(port string, ev pipeline.Event) { fmt.Printf("%s %s\n", port, ev.AppendJSON(nil)) }

func ExampleClient() {
	// A moderation service answering POST /players/NAME/moderation.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"player": %q, "action": "mute"}`, path.Base(path.Dir(r.URL.Path)))
	}))
	defer srv.Close()

	c, err := httpconn.NewClient(httpconn.ClientOptions{
		URL:     srv.URL + "/players/{data.player}/moderation",
		Headers: map[string]string{"Idempotency-Key": "warn-{data.player}-{data.warnings}"},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close(context.Background())

	events := []pipeline.Event{
		{Data: []byte(`{"player":"alice","warnings":3}`), Meta: []byte(`{"correlation":"r1"}`)},
		{Data: []byte(`{"warnings":3}`), Meta: []byte(`{"correlation":"r2"}`)},
	}
	if err := c.Process(context.Background(), events, printer{}); err != nil {
		fmt.Println(err)
	}
	// Output:
	// out {"data":{"player":"alice","action":"mute"},"meta":{"correlation":"r1","http":{"status":200,"attempts":1}}}
	// err {"data":{"warnings":3},"meta":{"correlation":"r2","http":{"attempts":0},"error":"http_client: url: {data.player}: template cannot be rendered: the value is missing"}}
}
