// An example Verilog design, the same as accumulator.py: eight registers that compute.
//
// word 0  A            read/write
// word 1  B            read/write
// word 2  A + B        read-only (writes ignored)
// word 3  accumulator  a write adds the value; a read returns the sum so far
// word 4  0xC0FFEE01   read-only: identifies this design
// word 5  cycles       read-only: clock cycles since reset
// words 6, 7           read as 0
// word 8 and above     bus error (the slave answers with wb_err)
//
// wb_adr is the word offset inside the user region: byte address user_base + 4*k
// arrives here as wb_adr == k.

module user_design (
    input  wire        clk,
    input  wire        rst,
    input  wire [29:0] wb_adr,
    input  wire [31:0] wb_dat_w,
    output reg  [31:0] wb_dat_r,
    input  wire [3:0]  wb_sel,
    input  wire        wb_cyc,
    input  wire        wb_stb,
    input  wire        wb_we,
    output reg         wb_ack,
    output reg         wb_err
);
    reg [31:0] a, b, acc, cycles;
    wire [2:0] word   = wb_adr[2:0];
    wire       mapped = (wb_adr[29:3] == 27'd0);
    wire       access = wb_cyc & wb_stb & ~wb_ack & ~wb_err;

    always @(posedge clk) begin
        if (rst) begin
            a <= 32'd0; b <= 32'd0; acc <= 32'd0; cycles <= 32'd0;
            wb_ack <= 1'b0; wb_err <= 1'b0; wb_dat_r <= 32'd0;
        end else begin
            cycles <= cycles + 32'd1;
            wb_ack <= 1'b0;
            wb_err <= 1'b0;
            if (access && !mapped) begin
                wb_err <= 1'b1;
            end else if (access) begin
                wb_ack <= 1'b1;
                if (wb_we) begin
                    case (word)
                        3'd0: a <= wb_dat_w;
                        3'd1: b <= wb_dat_w;
                        3'd3: acc <= acc + wb_dat_w;
                        default: ;
                    endcase
                end
                case (word)
                    3'd0: wb_dat_r <= a;
                    3'd1: wb_dat_r <= b;
                    3'd2: wb_dat_r <= a + b;
                    3'd3: wb_dat_r <= acc;
                    3'd4: wb_dat_r <= 32'hC0FFEE01;
                    3'd5: wb_dat_r <= cycles;
                    default: wb_dat_r <= 32'd0;
                endcase
            end
        end
    end
endmodule
