package lua

import (
	"testing"

	"github.com/tidwall/gjson"
	glua "github.com/yuin/gopher-lua"
)

// serPrelude defines ser(...), which joins its arguments' types and
// values into one string.
const serPrelude = `
local function ser(...)
  local n = select("#", ...)
  local t = {}
  for i = 1, n do
    local v = select(i, ...)
    t[#t + 1] = type(v) .. ":" .. tostring(v)
  end
  return n .. "[" .. table.concat(t, "|") .. "]"
end
`

// lua51 are the results that differ from gopher-lua's, where gopher-lua's
// differ from Lua 5.1.
var lua51 = map[string]string{
	// A failed match is one nil, not no value.
	`string.match("abc", "^b")`: "1[nil:nil]",
	// n = 0 replaces nothing (gopher-lua replaced every match).
	`string.gsub("abc", "%w", "x", 0)`: "2[string:abc|number:0]",
}

// TestLibrarySameAsGopherLua: the bounded library functions give the
// results of gopher-lua's own on ordinary input.
func TestLibrarySameAsGopherLua(t *testing.T) {
	exprs := []string{
		`string.find("hello world", "o w")`,
		`string.find("hello", "l+")`,
		`string.find("hello", "(l)(l)")`,
		`string.find("abc", "b", 1, true)`,
		`string.find("a.b", ".", 1, true)`,
		`string.find("abc", "x")`,
		`string.find("abc", "()b()")`,
		`string.find("abc", "")`,
		`string.find("abcabc", "b", 3)`,
		`string.find("abcabc", "b", -2)`,
		`string.match("key=val", "(%w+)=(%w+)")`,
		`string.match("hello", ".-l")`,
		`string.match("  x  ", "^%s*(.-)%s*$")`,
		`string.match("abc", "^b")`,
		`string.match("abc", "c", -1)`,
		`string.match("f(a(b)c)", "%b()")`,
		`string.match("xaax", "(a)%1")`,
		`(function() local t = {} for w in ("one two  three"):gmatch("%a+") do t[#t+1] = w end return table.concat(t, ",") end)()`,
		`(function() local t = {} for k, v in ("a=1, b=2"):gmatch("(%w+)=(%w+)") do t[#t+1] = k .. v end return table.concat(t, ",") end)()`,
		`(function() local t = {} for w in ("abc"):gmatch("") do t[#t+1] = "[" .. w .. "]" end return table.concat(t, ",") end)()`,
		`(function() local t = {} for w in ("abc"):gmatch("^%a") do t[#t+1] = w end return table.concat(t, ",") end)()`,
		`(function() local t = {} for p in ("abc"):gmatch("()") do t[#t+1] = p end return table.concat(t, ",") end)()`,
		`string.gsub("hello world", "o", "0")`,
		`string.gsub("hello", "", "-")`,
		`string.gsub("abc", "%w", "%0%0")`,
		`string.gsub("abc", "(%w)", "%1-")`,
		`string.gsub("hello world", "%w+", {hello = "HI", world = false})`,
		`string.gsub("abc", "%w", function(c) return c:upper() end)`,
		`string.gsub("abc", "%w", function(c) if c == "b" then return nil end return 1 end)`,
		`string.gsub("abc", "%w", "x", 2)`,
		`string.gsub("abc", "%w", "x", 0)`,
		`string.gsub("abc", "b", "%%")`,
		`string.gsub("abc", "b", "%x")`,
		`string.gsub("a b", "%s", "%")`,
		`string.gsub("abc", "^a", "X")`,
		`string.gsub("abc", "^", "X")`,
		`string.gsub("abc", "%w*", "x")`,
		`string.gsub("abc", "x*", "-")`,
		`string.gsub("a,b", "()", "%1")`,
		`string.format("%d %s %5.2f %x", 42, "hi", 3.14159, 255)`,
		`string.format("%q", "a\nb\"c")`,
		`string.format("%-5s|%5s|", "ab", "cd")`,
		`string.format("100%% %05d %g %e", 3, 1e20, 12345.678)`,
		`string.format("%c%c", 72, 105)`,
		`string.format("%s", 1.5)`,
		`("hello"):sub(2, 3)`, `("hello"):sub(-3)`, `("hello"):sub(0)`, `("hello"):sub(10)`, `("hello"):sub(2, -2)`, `("hello"):sub(3, 2)`,
		`("ABC"):byte(1, -1)`, `("A"):byte()`, `("ABC"):byte(10)`, `("ABC"):byte(-1)`, `("ABC"):byte(2, 10)`,
		`("Hello"):upper()`, `("Hello"):lower()`, `("Hello"):reverse()`, `(""):reverse()`,
		`string.rep("ab", 3)`, `string.rep("x", 0)`, `string.rep("x", -1)`, `string.rep("", 5)`,
		`table.concat({1, 2, 3}, ", ")`, `table.concat({}, "x")`, `table.concat({"a", "b", "c"}, "", 2, 3)`,
		`table.concat({"a"}, ",", 1, 5)`, `table.concat({"a", "b", "c"}, "-", 2)`, `table.concat({"a", "b"}, "-", 3)`, `table.concat({1.5, "x"})`,
		`unpack({1, 2, 3})`, `unpack({1, 2, 3}, 2)`, `unpack({1, 2, 3}, 2, 5)`, `unpack({}, 1, 0)`, `unpack({1, 2}, 3, 2)`,
	}
	for _, expr := range exprs {
		L := glua.NewState()
		if err := L.DoString(serPrelude + "R = ser(" + expr + ")"); err != nil {
			L.Close()
			t.Errorf("gopher-lua: %s: %v", expr, err)
			continue
		}
		want := L.GetGlobal("R").String()
		L.Close()
		if w, ok := lua51[expr]; ok {
			want = w
		}
		p := newProc(t, serPrelude+`emit("out", {r = ser(`+expr+`)})`, Options{})
		c := process(t, p, ev(`{}`, `{}`))
		if len(c.out["out"]) != 1 {
			t.Errorf("%s: outputs %v", expr, c.out)
			continue
		}
		if got := gjson.GetBytes(c.out["out"][0].Data, "r").Str; got != want {
			t.Errorf("%s = %s, gopher-lua %s", expr, got, want)
		}
	}
}
