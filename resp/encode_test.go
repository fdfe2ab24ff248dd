package resp

import "testing"

func TestAppendCommand(t *testing.T) {
	got := string(AppendCommand(nil, [][]byte{[]byte("SET"), []byte("k"), {}}))
	if want := "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"; got != want {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestEncodeByProtocol(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{string(AppendNull(nil, 2)), "$-1\r\n"},
		{string(AppendNull(nil, 3)), "_\r\n"},
		{string(AppendMap(nil, 2, 2)), "*4\r\n"},
		{string(AppendMap(nil, 2, 3)), "%2\r\n"},
		{string(AppendPush(nil, 3, 2)), "*3\r\n"},
		{string(AppendPush(nil, 3, 3)), ">3\r\n"},
		{string(AppendError(nil, "ERR x")), "-ERR x\r\n"},
		{string(AppendInt(nil, -7)), ":-7\r\n"},
		{string(AppendBulk(nil, "")), "$0\r\n\r\n"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q want %q", tc.got, tc.want)
		}
	}
}
