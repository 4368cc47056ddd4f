/* hp_tcp.c - TCP connection-tracking state machine as a grid [direction][flag class][state].
 *
 * Read hyperplane/engine/tcp_states.py for the theory of operation and the reasons per cell; this is
 * the same grid for the compiled engine (tests/engine/test_tcp_table.py compares them cell by cell).
 * Cells: a next state, IGN (pass, keep state) or INV (drop as tcp_invalid).
 */
#include "hp_tcp.h"

#include "hp_types.h"

_Static_assert(HP_TCP_N_STATES == HP_S_CLOSE + 1, "the grid has a column per TCP state");

/* the grid's rows, short */
#define SYN HP_TCP_CLASS_SYN
#define SYNACK HP_TCP_CLASS_SYNACK
#define FIN HP_TCP_CLASS_FIN
#define ACK HP_TCP_CLASS_ACK
#define RST HP_TCP_CLASS_RST
#define NONE HP_TCP_CLASS_NONE

#define sNO HP_S_NONE
#define sSS HP_S_SYN_SENT
#define sSR HP_S_SYN_RECV
#define sES HP_S_ESTABLISHED
#define sFW HP_S_FIN_WAIT
#define sCW HP_S_CLOSE_WAIT
#define sLA HP_S_LAST_ACK
#define sTW HP_S_TIME_WAIT
#define sCL HP_S_CLOSE
#define IGN HP_TCP_IGN
#define INV HP_TCP_INV

const int8_t hp_tcp_transitions[2][HP_TCP_N_FLAGCLASSES][HP_TCP_N_STATES] = {
    /* ORIG: environment -> VPC.
     *            sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL */
    {
        /* SYN    opens; retransmit; stray SYNs ignored; TIME_WAIT/CLOSE re-opened (RFC 6191) */
        [SYN]    = {sSS, sSS, IGN, IGN, IGN, IGN, IGN, sSS, sSS},
        /* SYNACK from the opener: only in a simultaneous open */
        [SYNACK] = {INV, INV, sSR, INV, INV, INV, INV, INV, INV},
        /* FIN    first FIN -> FIN_WAIT, second -> LAST_ACK (RFC 9293 3.6) */
        [FIN]    = {INV, INV, sFW, sFW, sLA, sLA, sLA, sTW, sCL},
        /* ACK    completes the handshake; acks a FIN; acks the last FIN */
        [ACK]    = {INV, INV, sES, sES, sCW, sCW, sTW, sTW, sCL},
        /* RST    closes in every state (RFC 9293 3.10.7) */
        [RST]    = {INV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
        /* NONE   no ACK, no SYN: never valid */
        [NONE]   = {INV, INV, INV, INV, INV, INV, INV, INV, INV},
    },
    /* REPLY: VPC -> ENI.
     *            sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL */
    {
        /* SYN    simultaneous open (RFC 9293 3.5 fig. 8); else the VPC cannot open */
        [SYN]    = {INV, sSR, IGN, INV, INV, INV, INV, INV, INV},
        /* SYNACK the answer to our SYN; later a retransmitted SYNACK, ignored */
        [SYNACK] = {INV, sSR, IGN, IGN, IGN, IGN, IGN, IGN, IGN},
        /* FIN    as from the opener */
        [FIN]    = {INV, INV, sFW, sFW, sLA, sLA, sLA, sTW, sCL},
        /* ACK    ignored before a SYNACK; completes a simultaneous open; acks FINs */
        [ACK]    = {INV, IGN, sES, sES, sCW, sCW, sTW, sTW, sCL},
        /* RST    closes in every state */
        [RST]    = {INV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL},
        /* NONE   never valid */
        [NONE]   = {INV, INV, INV, INV, INV, INV, INV, INV, INV},
    },
};
