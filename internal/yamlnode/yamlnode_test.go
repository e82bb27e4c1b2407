package yamlnode

import (
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestDescribeAndDeref(t *testing.T) {
	var doc yaml.Node
	src := "a: &x [1, 2]\nb: *x\nc: ~\nd: hi\ne: {k: v}\n"
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		t.Fatal(err)
	}
	m := doc.Content[0]
	want := map[string]string{"a": "a list", "b": "a list", "c": "nothing", "d": `"hi"`, "e": "a mapping"}
	for i := 0; i < len(m.Content); i += 2 {
		k, v := m.Content[i].Value, Deref(m.Content[i+1])
		if got := Describe(v); got != want[k] {
			t.Errorf("%s: %s, want %s", k, got, want[k])
		}
	}
	// A cycle of aliases ends after a bounded number of steps.
	a := &yaml.Node{Kind: yaml.AliasNode}
	b := &yaml.Node{Kind: yaml.AliasNode, Alias: a}
	a.Alias = b
	if Deref(a) == nil {
		t.Fatal("Deref of an alias cycle returned nil")
	}
}
