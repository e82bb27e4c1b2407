package luapattern

import "errors"

// ErrTooComplex reports a match whose backtracking stack would exceed
// MaxBacktrack entries.
var ErrTooComplex = errors.New("pattern/input too complex")

// Pattern is a compiled Lua pattern. It is immutable and may be shared.
type Pattern struct {
	insts  []inst
	anchor bool
}

// Compile parses and compiles a Lua pattern.
func Compile(p string) (pat *Pattern, err error) {
	defer func() {
		if v := recover(); v != nil {
			perr, ok := v.(*Error)
			if !ok {
				panic(v)
			}
			pat, err = nil, perr
		}
	}()
	seq := parsePattern(newScanner([]byte(p)), true)
	return &Pattern{insts: compilePattern(seq), anchor: seq.MustHead}, nil
}

// Anchored reports whether the pattern starts with '^': it matches only
// at the position a search starts from.
func (p *Pattern) Anchored() bool { return p.anchor }

// frame is an entry of the backtracking stack: an alternative to resume
// (pc >= 0, at position v) or a capture to restore (pc = -1-slot, old
// value v).
type frame struct {
	pc int32
	v  uint32
}

// Matcher runs compiled patterns. Its zero value is ready to use; it is
// not safe for concurrent use. Its step count and stack are kept across
// searches, so that Check is called every CheckEvery steps of the
// matcher's whole life, however the steps are split between calls.
type Matcher struct {
	// Check, when set, is called every CheckEvery VM steps; an error it
	// returns stops the search and is returned.
	Check func() error
	steps uint64
	stack []frame
}

// Next searches src for p at or after position start. It returns the
// match, or nil when there is none, and next, the position the search for
// the following match starts at (-1 when there is none to look for):
// the same sequence of matches as gopher-lua's pm.Find.
func (m *Matcher) Next(p *Pattern, src []byte, start int) (md *MatchData, next int, err error) {
	md = newMatchState()
	for sp := start; sp <= len(src); sp++ {
		ok, end, err := m.match(src, p.insts, sp, md)
		if err != nil {
			return nil, -1, err
		}
		if ok {
			next = max(sp+1, end)
			if p.anchor || next > len(src) {
				next = -1
			}
			return md, next, nil
		}
		if p.anchor {
			break
		}
		md.captures = md.captures[:0]
	}
	return nil, -1, nil
}

// match runs the VM from instruction 0 at position sp: a backtracking
// matcher equivalent to gopher-lua's recursive one, with an explicit stack.
func (m *Matcher) match(src []byte, insts []inst, sp int, md *MatchData) (bool, int, error) {
	m.stack = m.stack[:0]
	pc := 0
	for {
		m.steps++
		if m.steps%CheckEvery == 0 && m.Check != nil {
			if err := m.Check(); err != nil {
				return false, sp, err
			}
		}
		in := &insts[pc]
		ok := true
		switch in.OpCode {
		case opChar:
			if sp >= len(src) || !in.Class.Matches(int(src[sp])) {
				ok = false
			} else {
				pc++
				sp++
			}
		case opMatch:
			return true, sp, nil
		case opTailMatch:
			if sp >= len(src) {
				return true, sp, nil
			}
			ok = false
		case opJmp:
			pc = in.Operand1
		case opSplit:
			if len(m.stack) >= MaxBacktrack {
				return false, sp, ErrTooComplex
			}
			m.stack = append(m.stack, frame{pc: int32(in.Operand2), v: uint32(sp)})
			pc = in.Operand1
		case opSave:
			if len(m.stack) >= MaxBacktrack {
				return false, sp, ErrTooComplex
			}
			old := md.setCapture(in.Operand1, sp)
			m.stack = append(m.stack, frame{pc: int32(-1 - in.Operand1), v: old})
			pc++
		case opPSave:
			md.addPosCapture(in.Operand1, sp+1)
			pc++
		case opBrace:
			ok = false
			if sp < len(src) && int(src[sp]) == in.Operand1 {
				count := 1
				for sp = sp + 1; sp < len(src); sp++ {
					if int(src[sp]) == in.Operand2 {
						count--
					}
					if count == 0 {
						pc++
						sp++
						ok = true
						break
					}
					if int(src[sp]) == in.Operand1 {
						count++
					}
				}
			}
		case opNumber:
			idx := in.Operand1 * 2
			if idx >= md.CaptureLength()-1 {
				return false, sp, newError(_UNKNOWN, "invalid capture index")
			}
			capture := src[md.Capture(idx):md.Capture(idx+1)]
			if sp+len(capture) > len(src) || string(capture) != string(src[sp:sp+len(capture)]) {
				ok = false
			} else {
				pc++
				sp += len(capture)
			}
		default:
			panic("luapattern: unknown opcode")
		}
		if ok {
			continue
		}
		// Backtrack to the latest alternative, restoring the captures
		// saved since.
		for {
			if len(m.stack) == 0 {
				return false, sp, nil
			}
			f := m.stack[len(m.stack)-1]
			m.stack = m.stack[:len(m.stack)-1]
			if f.pc < 0 {
				md.restoreCapture(int(-1-f.pc), f.v)
				continue
			}
			pc, sp = int(f.pc), int(f.v)
			break
		}
	}
}
